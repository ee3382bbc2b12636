"""What a flow's plaintext says about its data: health protocols and identifiers, as evidence names.

Each direction's first bytes (in sequence order, bounded) are kept while a flow is inspected; the
detectors run on them once, when the flow is reported. Only detector *names* come out
(`protocol:hl7v2`, `identifier:nir`): the bytes are dropped with the flow's inspection state and never
reach a record, a log or the evidence store. Encrypted flows (TLS, QUIC) are not kept at all.
"""

from __future__ import annotations

from douane.daemon.dissect import MalformedPacket
from douane.daemon.health_protocols import detect
from douane.daemon.identifiers import scan_identifiers

# Which category an identifier is evidence of: the NIR, INS and RPPS are health identifiers in the
# hospital context douane watches (the INS is the health identity itself; the RPPS names a health
# professional); the INE is a pupil's number and the UAI a school's.
IDENTIFIER_CATEGORY = {"nir": "health", "ins": "health", "rpps": "health", "ine": "school",
                       "uai": "school"}


class Side:
    """One direction's first bytes, in order; segments out of order are skipped, not held."""

    __slots__ = ("data", "next_seq", "packets")

    def __init__(self) -> None:
        self.data = bytearray()
        self.next_seq: int | None = None
        self.packets = 0


class Content:
    """The first bytes of both directions of a flow, and the evidence found in them."""

    __slots__ = ("found", "limit", "malformed", "max_packets", "sides")

    def __init__(self, limit: int, max_packets: int) -> None:
        self.limit = limit
        self.max_packets = max_packets
        self.sides = (Side(), Side())  # (opener's side, other side)
        self.found: dict[str, list[str]] | None = None
        self.malformed = 0  # a detector committed to a protocol and found its bytes impossible

    def feed(self, outward: bool, seq: int | None, payload: bytes) -> None:
        """Keeps a segment (seq None for datagrams) while its side is under the bounds."""
        side = self.sides[0 if outward else 1]
        side.packets += 1
        if len(side.data) >= self.limit or side.packets > self.max_packets:
            return
        if seq is not None:
            if side.next_seq is not None and seq != side.next_seq:
                return  # a retransmission or a gap: detection needs no perfect stream
            side.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        side.data += payload[: self.limit - len(side.data)]
        self.found = None  # new bytes: detect again when asked

    @property
    def complete(self) -> bool:
        """Both sides have all they will keep, or the flow has had its share of payload packets
        (an upload whose other side sends no payload must not stay inspected to its end)."""
        out, back = self.sides
        if out.packets + back.packets >= 2 * self.max_packets:
            return True
        return all(len(s.data) >= self.limit or s.packets >= self.max_packets for s in self.sides)

    def evidence(self) -> dict[str, list[str]]:
        """Category -> evidence names, from the bytes kept so far (cached until new bytes come)."""
        if self.found is not None:
            return self.found
        found: dict[str, list[str]] = {}
        for outward, side in zip((True, False), self.sides, strict=True):
            if not side.data:
                continue
            data = bytes(side.data)
            try:
                detection = detect(data, outward)
            except MalformedPacket:
                self.malformed += 1
                detection = None
            if detection is not None:
                _add(found, detection.category, f"protocol:{detection.protocol}")
            for name in scan_identifiers(data):
                category = IDENTIFIER_CATEGORY.get(name)
                if category is not None:
                    _add(found, category, f"identifier:{name}")
        self.found = found
        return found


def _add(found: dict[str, list[str]], category: str, name: str) -> None:
    names = found.setdefault(category, [])
    if name not in names:
        names.append(name)

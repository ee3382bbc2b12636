"""Which name each client was given for each address: a bounded, TTL-aware DNS answer cache.

A flow to 20.199.120.7 is worth more to a DPO as "hdh.blob.core.windows.net", the name the
client asked its resolver for. Two clients may be told different names for one address (a CDN
serves many sites), so the name is remembered per client when the client is known and also
globally (for flows whose client did its DNS elsewhere, e.g. through a resolver inside the
network, or over DoH that we cannot read).

Memory is bounded under any traffic: one insertion-ordered table holds both kinds of entries,
and adding beyond `max_entries` drops the oldest written entries first (FIFO by last write;
every operation is O(1)). TTLs are clamped: a 5-second TTL would lose the name of a flow that
outlives it, and a week-long one would keep stale names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class DnsCache:
    """Address -> name, per client where known and globally, most recent answer wins.

    Args:
        max_entries: entries kept at most (a per-client answer takes two: its own and the
            global one).
        min_ttl: shortest lifetime in seconds given to an answer, whatever its TTL.
        max_ttl: longest lifetime in seconds given to an answer.
    """

    __slots__ = ("_entries", "max_entries", "max_ttl", "min_ttl")

    def __init__(self, max_entries: int = 100_000, min_ttl: float = 60.0, max_ttl: float = 86_400.0) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries: expected at least 2, got {max_entries}")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"min_ttl, max_ttl: expected 0 <= min_ttl <= max_ttl, got {min_ttl}, {max_ttl}")
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        # (client or None, address) -> (name, expiry time); None is the global entry.
        self._entries: OrderedDict[tuple[bytes | None, bytes], tuple[str, float]] = OrderedDict()

    def add(self, client: bytes | None, address: bytes, name: str, ttl: float, now: float) -> None:
        """Remember that `client` (None: unknown) was told `name` for `address` at `now`.

        The entry replaces any earlier one for the same key and lives min(max(ttl, min_ttl),
        max_ttl) seconds.
        """
        self.add_all(client, [(address, name, ttl)], now)

    def add_all(self, client: bytes | None, answers: Sequence[tuple[bytes, str, float]], now: float) -> None:
        """`add` for each (address, name, ttl) of one DNS answer, in order (one call per answer
        on the packet path, not one per address)."""
        entries = self._entries
        min_ttl, max_ttl = self.min_ttl, self.max_ttl
        for address, name, ttl in answers:
            value = (name, now + (min_ttl if ttl < min_ttl else max_ttl if ttl > max_ttl else ttl))
            key: tuple[bytes | None, bytes] = (None, address)
            entries[key] = value
            entries.move_to_end(key)
            if client is not None:
                key = (client, address)
                entries[key] = value
                entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, client: bytes | None, address: bytes, now: float) -> str | None:
        """The name `client` was last told for `address`, else the last any client was told.

        An entry expired at `now` is not returned, but it is kept until newer ones push it out:
        `now` is not always the latest time (a collected flow record asks about the time its
        connection began, which can be minutes before a captured packet asked about the present).
        """
        entries = self._entries
        if client is not None:
            hit = entries.get((client, address))
            if hit is not None and hit[1] > now:
                return hit[0]
        hit = entries.get((None, address))
        if hit is not None and hit[1] > now:
            return hit[0]
        return None

    def __len__(self) -> int:
        """Entries held, expired ones included until newer ones push them out."""
        return len(self._entries)

"""DNS messages (RFC 1035): which names the clients were told for which addresses.

Only what the flow pipeline needs is decoded: the header, the questions and the answer section's
A, AAAA and CNAME records. Other records are skipped by their RDLENGTH; the authority and
additional sections are not read. Compression pointers (RFC 1035 4.1.4) are followed in a loop
with a hop limit, never by recursion, so a pointer loop or a long pointer chain costs at most
`MAX_POINTER_HOPS` steps before it is refused.

Every name goes through `clean_hostname` before it leaves this module: a name that is not a
valid DNS host name (control bytes, a dot inside a label, an empty name) makes its record
(or question) disappear, not the whole message.

`parse_dns` and `parse_dns_tcp` follow the dissector contract of STYLE.md: they return a result,
return `None` when more bytes are needed (TCP only) or raise `MalformedPacket`. Nothing else
escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from douane.daemon.dissect import MalformedPacket
from douane.daemon.hostname import clean_hostname

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28

HEADER = struct.Struct("!HHHHHH")  # RFC 1035 4.1.1: id, flags, qdcount, ancount, nscount, arcount
HEADER_SIZE = 12
U16 = struct.Struct("!H")
QUESTION_TAIL = struct.Struct("!HH")  # RFC 1035 4.1.2: qtype, qclass
RR_FIXED = struct.Struct("!HHIH")  # RFC 1035 4.1.3: type, class, ttl, rdlength
RR_FIXED_SIZE = 10

MAX_MESSAGE = 65_535  # RFC 1035 4.2.2: the TCP length prefix is 16 bits; UDP carries less
MAX_NAME_WIRE = 255  # RFC 1035 3.1 / 2.3.4: a name is at most 255 octets on the wire
MAX_LABEL = 63  # RFC 1035 2.3.4: the two top bits of a length octet are 00 for a label
# A name has at most 127 labels (255 octets); a chain of more pointers than that is an attack.
MAX_POINTER_HOPS = 127
MAX_CNAME_HOPS = 16  # resolvers give up on longer chains (BIND: 16 restarts); so do we
MIN_QUESTION = 5  # root name (1 octet) + qtype + qclass
MIN_RR = 11  # root name (1 octet) + the 10 fixed octets

# RFC 1035 4.1.1 flags word
QR = 0x8000
OPCODE_MASK = 0x7800
Z_BIT = 0x0040  # reserved, must be zero (RFC 1035 4.1.1; AD and CD below it are RFC 4035)
RCODE_MASK = 0x000F
MAX_RCODE = 10  # RFC 2136 NOTZONE is the highest header RCODE in use

CLASS_IN = 1
CLASS_ANY = 255


class DnsAnswer(NamedTuple):
    """One answer record: A/AAAA data is the raw 4 or 16 address bytes, CNAME data the target name.

    A named tuple, not a dataclass: the parser makes one per record on the packet path, and a
    tuple is built several times faster than a frozen dataclass.
    """

    name: str
    rtype: int
    ttl: int
    data: bytes | str


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """The decoded part of a DNS message.

    `questions` holds (name, qtype) for each question with a valid name; `answers` the A, AAAA
    and CNAME records of the answer section whose names are valid, in wire order.
    """

    id: int
    response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]
    answers: tuple[DnsAnswer, ...]


def _name(data: bytes, pos: int, end: int, memo: dict[int, str | None]) -> tuple[str | None, int]:
    """Read the name at `pos`, through `memo`: the names already decoded in this message by offset.

    Compression makes most names of a response pointers to a few offsets (every A record of a
    CNAME chain's end points to the same name), so each offset is walked and cleaned once.
    """
    if pos < end and data[pos] >= 0xC0:
        if pos + 2 > end:
            raise MalformedPacket("truncated", "dns compression pointer")
        target = ((data[pos] & 0x3F) << 8) | data[pos + 1]
        if target in memo:
            return memo[target], pos + 2
        name, after = _walk(data, pos, end)
        memo[target] = name
        return name, after
    name, after = _walk(data, pos, end)
    memo[pos] = name
    return name, after


def _walk(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    """Read the (possibly compressed) name at `pos`.

    Returns:
        (name, next): the cleaned name, or None when it is not a valid host name, and the
        offset just past the name where it was written (not where a pointer led).

    Raises:
        MalformedPacket: the name runs past the message, is longer than 255 octets, uses a
            reserved label type, or its pointers loop or chain too long.
    """
    segments: list[bytes] = []  # the runs of labels, one per pointer taken
    run = pos  # where the current run of labels starts
    wire = 1  # the root label's length octet
    hops = 0
    after = -1  # where the name ends in the record, once the first pointer is taken
    while True:
        if pos >= end:
            raise MalformedPacket("truncated", "dns name")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length <= MAX_LABEL:
            stop = pos + 1 + length
            if stop > end:
                raise MalformedPacket("truncated", "dns label")
            wire += length + 1
            if wire > MAX_NAME_WIRE:
                raise MalformedPacket("malformed", "dns name longer than 255 octets")
            pos = stop
        elif length >= 0xC0:
            # RFC 1035 4.1.4: a pointer is two octets, 11 then a 14-bit offset into the message.
            if pos + 2 > end:
                raise MalformedPacket("truncated", "dns compression pointer")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise MalformedPacket("malformed", "dns compression pointer chain")
            if after < 0:
                after = pos + 2
            segments.append(data[run:pos])
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if pos < HEADER_SIZE:
                raise MalformedPacket("malformed", "dns compression pointer into the header")
            run = pos
        else:
            # 01 and 10: extended label types (RFC 6891 section 5), never deployed.
            raise MalformedPacket("malformed", "dns label type")
    if segments:
        segments.append(data[run : pos - 1])
        wire_name = b"".join(segments)
    else:
        wire_name = data[run : pos - 1]
    return _wire_name(wire_name), (after if after >= 0 else pos)


@lru_cache(maxsize=8192)
def _wire_name(labels: bytes) -> str | None:
    """The cleaned name of a run of length-prefixed labels (checked already), or None.

    Keyed by the wire bytes, so that the few names a gateway resolves over and over are
    decoded and cleaned once; bounded, so that random names cost time but no memory.
    """
    parts = []
    pos = 0
    while pos < len(labels):
        stop = pos + 1 + labels[pos]
        label = labels[pos + 1 : stop]
        if b"." in label:
            return None  # would read as two labels once joined: not a host name
        parts.append(label)
        pos = stop
    if not parts:
        return None
    return clean_hostname(b".".join(parts))


def parse_dns(payload: bytes, partial: bool = False) -> DnsMessage:
    """Parse one DNS message (a UDP payload, or a TCP message without its length prefix).

    Args:
        payload: the message.
        partial: the payload may be cut short (the first fragment of a fragmented UDP
            response, a snapped capture): return what was read before the cut instead of
            raising "truncated". Impossible content still raises.

    Returns:
        The message's header fields, valid questions and A/AAAA/CNAME answers.

    Raises:
        MalformedPacket: the message is cut short ("truncated") or impossible ("malformed").
            Nothing else escapes.
    """
    ident, flags, questions, answers = _read(payload, partial)
    return DnsMessage(
        id=ident,
        response=bool(flags & QR),
        rcode=flags & RCODE_MASK,
        questions=tuple(questions),
        answers=tuple(map(DnsAnswer._make, answers)),
    )


def read_answers(payload: bytes) -> tuple[int, bool, str | None, list[tuple[bytes, str, int]]]:
    """What identification wants of one message, without building a `DnsMessage`.

    The same as `parse_dns(payload, partial=True)` followed by `address_names`, for the packet
    path, where every DNS answer passes: every name the message carries is still read and
    checked, only the objects are not made.

    Returns:
        (id, is a response, the first valid question name or None, the `address_names` list).

    Raises:
        MalformedPacket: as `parse_dns` with `partial=True`.
    """
    ident, flags, questions, answers = _read(payload, True)
    first = questions[0][0] if questions else None
    if not flags & QR or flags & RCODE_MASK or not answers:
        return ident, bool(flags & QR), first, []
    return ident, True, first, _addresses(questions, answers)


_Record = tuple[str, int, int, bytes | str]  # DnsAnswer's fields, before it is made


def _read(payload: bytes, partial: bool) -> tuple[int, int, list[tuple[str, int]], list[_Record]]:
    """The header's id and flags, the valid questions and the A/AAAA/CNAME answers (as tuples)."""
    end = len(payload)
    if end < HEADER_SIZE:
        raise MalformedPacket("truncated", "dns header")
    if end > MAX_MESSAGE:
        raise MalformedPacket("malformed", "dns message longer than 65535 octets")
    ident, flags, qdcount, ancount, _nscount, _arcount = HEADER.unpack_from(payload, 0)
    # Each question and record takes a minimum of room: counts beyond what the bytes can hold
    # are refused before any loop runs on them (a cut message can hold fewer than it says).
    if not partial and qdcount * MIN_QUESTION + ancount * MIN_RR > end - HEADER_SIZE:
        raise MalformedPacket("malformed", "dns counts exceed the message")
    questions: list[tuple[str, int]] = []
    answers: list[_Record] = []
    try:
        _sections(payload, end, qdcount, ancount, questions, answers)
    except MalformedPacket as error:
        if not partial or error.reason != "truncated":
            raise
    return ident, flags, questions, answers


def _sections(
    payload: bytes, end: int, qdcount: int, ancount: int,
    questions: list[tuple[str, int]], answers: list[_Record],
) -> None:
    """Append the questions and the A/AAAA/CNAME answers to the lists, in wire order.

    Each loop consumes at least 5 (question) or 11 (record) octets per turn or raises, so the
    counts, whatever they say, cannot make it run longer than the message allows.
    """
    pos = HEADER_SIZE
    memo: dict[int, str | None] = {}
    for _ in range(qdcount):
        qname, pos = _name(payload, pos, end, memo)
        if pos + 4 > end:
            raise MalformedPacket("truncated", "dns question")
        qtype = (payload[pos] << 8) | payload[pos + 1]
        pos += 4
        if qname is not None:
            questions.append((qname, qtype))
    for _ in range(ancount):
        # Most owners are a pointer to a name read already (the question, a CNAME target):
        # looked up here rather than through `_name`, one call less per record.
        if pos + 1 < end and payload[pos] >= 0xC0:
            target = ((payload[pos] & 0x3F) << 8) | payload[pos + 1]
            if target in memo:
                owner = memo[target]
                pos += 2
            else:
                owner, pos = _name(payload, pos, end, memo)
        else:
            owner, pos = _name(payload, pos, end, memo)
        if pos + RR_FIXED_SIZE > end:
            raise MalformedPacket("truncated", "dns record header")
        rtype, _rclass, ttl, rdlength = RR_FIXED.unpack_from(payload, pos)
        pos += RR_FIXED_SIZE
        rdata_end = pos + rdlength
        if rdata_end > end:
            raise MalformedPacket("truncated", "dns record data")
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 8: a TTL with the top bit set is read as zero
        if owner is not None:
            if rtype == TYPE_A:
                if rdlength != 4:
                    raise MalformedPacket("malformed", "dns A record length")
                answers.append((owner, rtype, ttl, payload[pos:rdata_end]))
            elif rtype == TYPE_AAAA:
                if rdlength != 16:
                    raise MalformedPacket("malformed", "dns AAAA record length")
                answers.append((owner, rtype, ttl, payload[pos:rdata_end]))
            elif rtype == TYPE_CNAME:
                target_name, stop = _name(payload, pos, end, memo)
                if stop != rdata_end:
                    raise MalformedPacket("malformed", "dns CNAME record length")
                if target_name is not None:
                    answers.append((owner, rtype, ttl, target_name))
        pos = rdata_end


def parse_dns_tcp(stream: bytes) -> tuple[DnsMessage | None, int]:
    """Parse the first DNS message of a TCP stream (RFC 1035 4.2.2, RFC 7766 section 8).

    Args:
        stream: the bytes of one direction of the connection, from a message boundary.

    Returns:
        (message, consumed): the message and the bytes it took including its 2-octet length
        prefix, or (None, 0) when the stream does not hold the whole message yet.

    Raises:
        MalformedPacket: the length prefix is impossible or the message does not parse.
    """
    if len(stream) < 2:
        return None, 0
    (length,) = U16.unpack_from(stream, 0)
    if length < HEADER_SIZE:
        raise MalformedPacket("malformed", "dns over tcp length prefix")
    if len(stream) < 2 + length:
        return None, 0
    return parse_dns(stream[2 : 2 + length]), 2 + length


def address_names(msg: DnsMessage) -> list[tuple[bytes, str, int]]:
    """The names a response gave its client, keyed by address.

    For each question, the CNAME chain is followed from the question name (in a loop, at most
    `MAX_CNAME_HOPS` links), and every A/AAAA answer owned by a name on that chain yields
    (address, question name, ttl). The ttl is the smallest along the chain, since the mapping
    ends when any link expires. Answers for names off the chain are ignored: a resolver has no
    reason to send them, and the client would not use them for this question.

    Returns:
        A list of (raw address bytes, question name, ttl in seconds); empty for a query or an
        error response.
    """
    if not msg.response or msg.rcode != 0 or not msg.answers:
        return []
    return _addresses(msg.questions, msg.answers)


def _addresses(
    questions: Iterable[tuple[str, int]], answers: Sequence[_Record]
) -> list[tuple[bytes, str, int]]:
    """`address_names` on the questions and the answers as (name, rtype, ttl, data) tuples."""
    cnames: dict[str, tuple[str, int]] = {}
    for owner, _rtype, ttl, data in answers:
        if isinstance(data, str) and owner not in cnames:  # a CNAME: its data is the target
            cnames[owner] = (data, ttl)
    result: list[tuple[bytes, str, int]] = []
    for qname, _qtype in questions:
        # chain: owner name -> the smallest TTL of the CNAME links that lead to it
        chain = {qname: 0xFFFFFFFF}
        current, reach = qname, 0xFFFFFFFF
        for _ in range(MAX_CNAME_HOPS if cnames else 0):
            link = cnames.get(current)
            if link is None or link[0] in chain:
                break
            current, reach = link[0], min(reach, link[1])
            chain[current] = reach
        for owner, _rtype, ttl, data in answers:
            if isinstance(data, bytes):  # A or AAAA
                at = chain.get(owner)
                if at is not None:
                    result.append((data, qname, ttl if ttl < at else at))
    return result


def looks_like_dns(payload: bytes) -> bool:
    """A cheap test for a DNS message on a port other than 53.

    True when the header is a standard query or response (opcode 0, Z bit clear, a known
    RCODE, one question, counts the size can hold) and the question is a well-formed
    uncompressed name of the IN (or ANY) class ending where the message can hold it. It never
    raises; a True answer still has to be confirmed by `parse_dns`.
    """
    end = len(payload)
    if end < HEADER_SIZE + MIN_QUESTION or end > MAX_MESSAGE:
        return False
    _ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(payload, 0)
    if flags & (OPCODE_MASK | Z_BIT) or (flags & RCODE_MASK) > MAX_RCODE or qdcount != 1:
        return False
    if MIN_QUESTION + (ancount + nscount + arcount) * MIN_RR > end - HEADER_SIZE:
        return False
    pos = HEADER_SIZE
    while True:
        if pos >= end:
            return False
        length = payload[pos]
        if length == 0:
            break
        if length > MAX_LABEL:
            return False  # the first name has nothing before it to point to
        pos += length + 1
        if pos - HEADER_SIZE > MAX_NAME_WIRE:
            return False
    if pos + 5 > end:
        return False
    qclass = ((payload[pos + 3] << 8) | payload[pos + 4]) & 0x7FFF  # top bit: mDNS unicast-response
    return qclass in (CLASS_IN, CLASS_ANY)

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
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """One answer record: A/AAAA data is the raw 4 or 16 address bytes, CNAME data the target name."""

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
    labels: list[bytes] = []
    wire = 1  # the root label's length octet
    hops = 0
    after = -1  # where the name ends in the record, once the first pointer is taken
    valid = True
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
            label = data[pos + 1 : stop]
            if b"." in label:
                valid = False  # would read as two labels once joined: not a host name
            labels.append(label)
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
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if pos < HEADER_SIZE:
                raise MalformedPacket("malformed", "dns compression pointer into the header")
        else:
            # 01 and 10: extended label types (RFC 6891 section 5), never deployed.
            raise MalformedPacket("malformed", "dns label type")
    if not valid or not labels:
        return None, (after if after >= 0 else pos)
    return clean_hostname(b".".join(labels)), (after if after >= 0 else pos)


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
    answers: list[DnsAnswer] = []
    try:
        _sections(payload, end, qdcount, ancount, questions, answers)
    except MalformedPacket as error:
        if not partial or error.reason != "truncated":
            raise
    return DnsMessage(
        id=ident,
        response=bool(flags & QR),
        rcode=flags & RCODE_MASK,
        questions=tuple(questions),
        answers=tuple(answers),
    )


def _sections(
    payload: bytes, end: int, qdcount: int, ancount: int,
    questions: list[tuple[str, int]], answers: list[DnsAnswer],
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
                answers.append(DnsAnswer(owner, rtype, ttl, payload[pos:rdata_end]))
            elif rtype == TYPE_AAAA:
                if rdlength != 16:
                    raise MalformedPacket("malformed", "dns AAAA record length")
                answers.append(DnsAnswer(owner, rtype, ttl, payload[pos:rdata_end]))
            elif rtype == TYPE_CNAME:
                target, stop = _name(payload, pos, end, memo)
                if stop != rdata_end:
                    raise MalformedPacket("malformed", "dns CNAME record length")
                if target is not None:
                    answers.append(DnsAnswer(owner, rtype, ttl, target))
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
    cnames: dict[str, tuple[str, int]] = {}
    for answer in msg.answers:
        if isinstance(answer.data, str) and answer.name not in cnames:  # CNAME: data is the target
            cnames[answer.name] = (answer.data, answer.ttl)
    result: list[tuple[bytes, str, int]] = []
    for qname, _qtype in msg.questions:
        # chain: owner name -> the smallest TTL of the CNAME links that lead to it
        chain = {qname: 0xFFFFFFFF}
        current, ttl = qname, 0xFFFFFFFF
        for _ in range(MAX_CNAME_HOPS):
            link = cnames.get(current)
            if link is None or link[0] in chain:
                break
            current, ttl = link[0], min(ttl, link[1])
            chain[current] = ttl
        for answer in msg.answers:
            if isinstance(answer.data, bytes):  # A or AAAA
                reach = chain.get(answer.name)
                if reach is not None:
                    result.append((answer.data, qname, min(reach, answer.ttl)))
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

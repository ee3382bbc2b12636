"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) export datagrams into flow records.

`Decoder.decode` has the contract of every douane dissector (STYLE.md): it returns the records of one
datagram (a list, possibly empty while templates are missing), returns `None` for a datagram that is
not an export packet of an enabled protocol (unknown version), or raises `MalformedPacket`. Nothing
else escapes. The decoder keeps per-exporter state: templates per (exporter, observation domain or
source id), data sets held until their template arrives (bounded in number and time), sampling
intervals from options records, and the next expected sequence number.

Each record is a `FlowRecord`: the flow as the exporter saw it, `src` -> `dst`, with the reverse
direction's counters when the exporter sends biflow records (RFC 5103), and the server's name when
the exporter sends one in a field douane reads (`NAME_SOURCES`): every such name passes through
`clean_hostname`, so what is not a plain DNS name never leaves the decoder.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from douane.daemon.dissect import MalformedPacket
from douane.daemon.hostname import SOURCE_RANK, clean_hostname
from douane.daemon.http import _host_of  # the Host header's own rule (port, userinfo), shared on purpose

NETFLOW5 = "netflow5"
NETFLOW9 = "netflow9"
IPFIX = "ipfix"
PROTOCOLS = (NETFLOW5, NETFLOW9, IPFIX)

# Information elements (IANA IPFIX registry; NetFlow v9 field types share the numbers below 128).
IE_OCTETS = 1
IE_PACKETS = 2
IE_PROTOCOL = 4
IE_TCP_FLAGS = 6
IE_SRC_PORT = 7
IE_SRC_V4 = 8
IE_DST_PORT = 11
IE_DST_V4 = 12
IE_LAST_SWITCHED = 21  # sysUpTime milliseconds at the last packet (v9, and IPFIX with IE 160)
IE_FIRST_SWITCHED = 22
IE_SRC_V6 = 27
IE_DST_V6 = 28
IE_SAMPLING_INTERVAL = 34
IE_DIRECTION = 61  # 0 ingress, 1 egress
IE_OCTETS_TOTAL = 85
IE_PACKETS_TOTAL = 86
IE_START_SECONDS = 150
IE_END_SECONDS = 151
IE_START_MS = 152
IE_END_MS = 153
IE_SYSTEM_INIT_MS = 160
IE_SAMPLING_PACKET_INTERVAL = 305
IE_SAMPLING_PACKET_SPACE = 306
IE_HTTP_REQUEST_HOST = 460  # httpRequestHost: the Host header's value (RFC 7230 5.4), a port possible
ENTERPRISE_REVERSE = 29305  # RFC 5103 section 6.1: reverse IEs share the forward numbers
# ntop's private enterprise number: nProbe (and exporters that copy its templates) send names in
# its elements, listed in nProbe's documentation as "[NFv9 57659][IPFIX 35632.187] %HTTP_HOST"; the
# v9 number is 57472 (NTOP_V9_BASE) plus the IPFIX one.
ENTERPRISE_NTOP = 35632
NTOP_V9_BASE = 57472
NTOP_HTTP_HOST = 187  # HTTP(S) host name
NTOP_TLS_SERVER_NAME = 188  # TLS SNI (SSL_SERVER_NAME in older nProbe releases)
NTOP_DNS_QUERY = 205  # the query name of a DNS flow
VARIABLE_LENGTH = 65535  # RFC 7011 section 7

V5_HEADER = struct.Struct("!HHIIIIBBH")  # version, count, uptime, secs, nsecs, sequence, engine, sampling
# src, dst, (next hop), interfaces, packets, octets, first, last, ports, flags, proto, tos, (AS, masks)
V5_RECORD = struct.Struct("!4s4s4xHHIIIIHHxBBB8x")
V5_MAX_COUNT = 30  # Cisco's documented maximum records per v5 datagram
V9_HEADER = struct.Struct("!HHIIII")  # version, count, uptime, secs, sequence, source id
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain
SET_HEADER = struct.Struct("!HH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")


class FlowRecord(NamedTuple):
    """One decoded flow record, oriented as the exporter sent it (src -> dst)."""

    proto: int
    src: bytes  # raw 4- or 16-byte address
    sport: int
    dst: bytes
    dport: int
    packets: int  # src -> dst, scaled by the sampling interval
    bytes: int
    rpackets: int  # dst -> src: only biflow records (RFC 5103) carry these
    rbytes: int
    first: float  # Unix seconds
    last: float
    tcp_flags: int
    direction: int | None  # IE 61: 0 ingress, 1 egress, None when absent
    sampling: int  # the interval the counters were scaled by (1: not sampled)
    hostname: str | None = None  # cleaned (hostname.clean_hostname), or None
    hostname_source: str | None = None  # as in the flow record: tls_sni, http_host, dns_query


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder bounds (YAML section `capture.collector`)."""

    protocols: tuple[str, ...] = PROTOCOLS
    max_templates: int = 4096  # over all exporters; the oldest template goes first
    template_timeout: float = 1800.0  # RFC 7011 section 8.4 leaves it to configuration; 30 min
    max_pending: int = 1024  # data sets held waiting for their template
    pending_timeout: float = 10.0  # seconds a data set may wait for its template


@dataclass
class ExporterStats:
    """Per-exporter health, plain integers read by the metrics collector."""

    datagrams: int = 0
    records: int = 0
    templates: int = 0
    sequence_gaps: int = 0  # export packets (v5: records; IPFIX: records) lost, by sequence
    unknown_template: int = 0  # data sets dropped: their template never came in time
    malformed: int = 0


# A template's fields: (key, length) with key = IE number, or enterprise << 16 | IE number.
Fields = tuple[tuple[int, int], ...]
Domain = tuple[str, int, int]  # (exporter, version, source id / observation domain)
Clock = tuple[int, int]  # (header time in Unix ms, sysUpTime ms then; -1: from IPFIX IE 160)


@dataclass
class _Template:
    fields: Fields
    options: bool  # an options template: its records describe the exporter, not flows
    stored: float
    fixed: int  # length of one record when no field is variable-length, else 0
    minimum: int  # the smallest a record can be
    # Fixed-length templates of plain fields: one struct call per record, unread fields skipped.
    plan: tuple[struct.Struct, tuple[int, ...]] | None = None
    names: bool = False  # a field may carry the server's name (NAME_SOURCES)
    # Fixed-length flow templates compile_builder accepts: records built without a dict.
    builder: _Builder | None = None


@dataclass
class _DomainState:
    sequence: int | None = None
    sampling: int = 1
    system_init: int | None = None  # IPFIX IE 160 (Unix ms), for exporters sending 21/22 (softflowd)
    pending: deque[tuple[float, int, bytes, Clock]] = field(default_factory=deque)


def _reverse(ie: int) -> int:
    return ENTERPRISE_REVERSE << 16 | ie


R_OCTETS = _reverse(IE_OCTETS)
R_PACKETS = _reverse(IE_PACKETS)
R_OCTETS_TOTAL = _reverse(IE_OCTETS_TOTAL)
R_PACKETS_TOTAL = _reverse(IE_PACKETS_TOTAL)


def _ntop(ie: int) -> int:
    return ENTERPRISE_NTOP << 16 | ie


# Fields that carry the server's name, and the `hostname_source` each one stands for: what the
# exporter read is what douane's own inspection reads (the HTTP request's Host, the ClientHello's
# SNI, a resolver flow's question), so the sources, and their precedence, are the same.
NAME_SOURCES: dict[int, str] = {
    IE_HTTP_REQUEST_HOST: "http_host",
    _ntop(NTOP_HTTP_HOST): "http_host",
    NTOP_V9_BASE + NTOP_HTTP_HOST: "http_host",
    _ntop(NTOP_TLS_SERVER_NAME): "tls_sni",
    NTOP_V9_BASE + NTOP_TLS_SERVER_NAME: "tls_sni",
    _ntop(NTOP_DNS_QUERY): "dns_query",
    NTOP_V9_BASE + NTOP_DNS_QUERY: "dns_query",
}
# Enterprise elements read (others are skipped by length): RFC 5103's reverse counters, ntop's names.
ENTERPRISE_KEYS = frozenset({
    _reverse(IE_OCTETS), _reverse(IE_PACKETS), _reverse(IE_OCTETS_TOTAL), _reverse(IE_PACKETS_TOTAL),
    *(key for key in NAME_SOURCES if key >> 16 == ENTERPRISE_NTOP),
})


def _truncated(what: str) -> MalformedPacket:
    return MalformedPacket("truncated", what)


def _malformed(what: str) -> MalformedPacket:
    return MalformedPacket("malformed", what)


def decode_v5(data: bytes, enabled_sampling: bool = True) -> tuple[int, int, list[FlowRecord]]:
    """A NetFlow v5 datagram into (sequence, record count, records); raises MalformedPacket."""
    if len(data) < V5_HEADER.size:
        raise _truncated("netflow5 header")
    version, count, uptime, secs, nsecs, sequence, _engine, _eid, sampling = V5_HEADER.unpack_from(data)
    if version != 5:
        raise _malformed("netflow5 version")
    if count == 0 or count > V5_MAX_COUNT:
        raise _malformed("netflow5 count")
    if len(data) < V5_HEADER.size + count * V5_RECORD.size:
        raise _truncated("netflow5 records")
    # Top two bits: sampling mode; low 14 bits: the interval (0 or 1: every packet).
    interval = sampling & 0x3FFF if enabled_sampling else 0
    scale = interval if interval > 1 else 1
    now_ms = secs * 1000 + nsecs // 1_000_000
    records = []
    offset = V5_HEADER.size
    for _ in range(count):
        (src, dst, _inp, _out, pkts, octets, first, last, sport, dport, flags, proto,
         _tos) = V5_RECORD.unpack_from(data, offset)
        offset += V5_RECORD.size
        records.append(FlowRecord(
            proto, src, sport, dst, dport, pkts * scale, octets * scale, 0, 0,
            _uptime_time(now_ms, uptime, first), _uptime_time(now_ms, uptime, last), flags, None,
            scale,
        ))
    return sequence, count, records


def _uptime_time(now_ms: int, uptime: int, at: int) -> float:
    """An exporter's sysUpTime milliseconds as Unix seconds; sysUpTime wraps at 2**32 ms."""
    delta = (uptime - at) & 0xFFFFFFFF
    if delta >= 0x80000000:
        delta -= 0x100000000  # `at` after the header's uptime: a clock quirk, not 49 days ago
    return (now_ms - delta) / 1000.0


def parse_template_fields(
    data: bytes, offset: int, end: int, count: int, ipfix: bool
) -> tuple[Fields, int]:
    """`count` field specifiers from `offset`: (fields, offset after). Raises MalformedPacket."""
    fields = []
    for _ in range(count):
        if offset + 4 > end:
            raise _truncated("template field")
        ie, length = SET_HEADER.unpack_from(data, offset)
        offset += 4
        if ipfix and ie & 0x8000:  # RFC 7011 section 3.2: enterprise bit, then the number
            if offset + 4 > end:
                raise _truncated("template enterprise number")
            (enterprise,) = U32.unpack_from(data, offset)
            offset += 4
            # Only the enterprise elements douane reads get a key; others are skipped by length.
            key = enterprise << 16 | (ie & 0x7FFF)
            if key not in ENTERPRISE_KEYS:
                key = -1
        else:
            key = ie
        if length == 0 or (length == VARIABLE_LENGTH and not ipfix):
            raise _malformed("template field length")
        fields.append((key, length))
    return tuple(fields), offset


def _make_template(fields: Fields, options: bool, now: float) -> _Template:
    variable = any(length == VARIABLE_LENGTH for _k, length in fields)
    minimum = sum(1 if length == VARIABLE_LENGTH else length for _k, length in fields)
    return _Template(fields, options, now, 0 if variable else minimum, minimum,
                     None if variable else _plan(fields),
                     any(key in NAME_SOURCES for key, _length in fields),
                     None if options else compile_builder(fields))


INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _plan(fields: Fields) -> tuple[struct.Struct, tuple[int, ...]] | None:
    """A struct format reading the fields douane uses, or None for the field-by-field path."""
    fmt = ["!"]
    keys: list[int] = []
    for key, length in fields:
        if key not in WANTED:
            fmt.append(f"{length}x")
        elif key in keys:
            return None  # a repeated field: the first counts, as on the slow path
        elif key in RAW_KEYS:
            fmt.append(f"{length}s")
            keys.append(key)
        elif length in INT_CODES:
            fmt.append(INT_CODES[length])
            keys.append(key)
        else:
            return None  # reduced-size encodings of 3, 5, 6, 7 bytes; over-long integers
    return struct.Struct("".join(fmt)), tuple(keys)


# How a compiled template's records carry their times, decided once per template with the
# precedence `Decoder._record` applies per record: milliseconds (152/153), else seconds (150/151),
# else sysUpTime first/last switched (22/21), else none (the export time stands in).
TIMES_NONE, TIMES_MS, TIMES_SECONDS, TIMES_UPTIME = range(4)
# Appended to each unpacked row so that an element the template lacks is read at a fixed index:
# 0 for a missing integer, None for a missing direction.
_ABSENT = (0, None)


class _Builder(NamedTuple):
    """A flow template compiled when it is learnt: its data records are read with one struct pass
    over the set and built by index, without a dict per record (`Decoder._build`).

    `pick` takes the row (the struct's values followed by `_ABSENT`) to (protocol, source,
    source port, destination, destination port, packets, octets, reverse packets, reverse
    octets, time 0, time 1, TCP flags, direction), the elements and fallbacks `Decoder._record`
    reads, resolved once; `names` are the (key, row index) of the fields that may carry a name.
    """

    layout: struct.Struct
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    times: int
    names: tuple[tuple[int, int], ...]


def compile_builder(fields: Fields) -> _Builder | None:
    """The compiled reader of a fixed-length flow template, or None where the record-by-record
    path must decide (see below): both give the same `FlowRecord`s.

    None for a template with a variable-length field (RFC 7011 section 7: records differ in
    length), without a pair of addresses (no flow record: options, MAC-only), with
    addresses of impossible lengths (each record is malformed), or with an element read as an
    integer in a reduced-size encoding struct has no code for (RFC 7011 section 6.2: 3, 5, 6 or
    7 bytes).
    """
    fmt = ["!"]
    index: dict[int, int] = {}
    lengths: dict[int, int] = {}
    for key, length in fields:
        if length == VARIABLE_LENGTH:
            return None
        if key not in RECORD_KEYS or key in index:
            fmt.append(f"{length}x")  # not read for a flow record, or a repeat: the first counts
        elif key in RAW_KEYS:
            fmt.append(f"{length}s")
            index[key], lengths[key] = len(index), length
        elif length in INT_CODES:
            fmt.append(INT_CODES[length])
            index[key], lengths[key] = len(index), length
        elif length > 8:
            fmt.append(f"{length}x")  # an over-long integer is not read (nor on the other path)
        else:
            return None
    if IE_SRC_V4 in index and IE_DST_V4 in index:
        src, dst = IE_SRC_V4, IE_DST_V4
    elif IE_SRC_V6 in index and IE_DST_V6 in index:
        src, dst = IE_SRC_V6, IE_DST_V6
    else:
        return None
    if lengths[src] not in (4, 16) or lengths[src] != lengths[dst]:
        return None
    zero, none = len(index), len(index) + 1  # where _ABSENT lands in the row

    def at(key: int, fallback: int | None = None) -> int:
        return index.get(key, index.get(fallback, zero) if fallback is not None else zero)

    if IE_START_MS in index and IE_END_MS in index:
        times, time0, time1 = TIMES_MS, index[IE_START_MS], index[IE_END_MS]
    elif IE_START_SECONDS in index:
        times, time0, time1 = TIMES_SECONDS, index[IE_START_SECONDS], at(IE_END_SECONDS, IE_START_SECONDS)
    elif IE_FIRST_SWITCHED in index and IE_LAST_SWITCHED in index:
        times, time0, time1 = TIMES_UPTIME, index[IE_FIRST_SWITCHED], index[IE_LAST_SWITCHED]
    else:
        times, time0, time1 = TIMES_NONE, zero, zero
    pick = itemgetter(
        at(IE_PROTOCOL), index[src], at(IE_SRC_PORT), index[dst], at(IE_DST_PORT),
        at(IE_PACKETS, IE_PACKETS_TOTAL), at(IE_OCTETS, IE_OCTETS_TOTAL),
        at(R_PACKETS, R_PACKETS_TOTAL), at(R_OCTETS, R_OCTETS_TOTAL), time0, time1,
        at(IE_TCP_FLAGS), index.get(IE_DIRECTION, none),
    )
    names = tuple((key, index[key]) for key in NAME_SOURCES if key in index)
    return _Builder(struct.Struct("".join(fmt)), pick, times, names)


class Decoder:
    """Stateful decoder for every exporter: templates, held data sets, sampling and sequences."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config
        self.stats: dict[str, ExporterStats] = {}
        self._templates: dict[tuple[Domain, int], _Template] = {}
        self._domains: dict[Domain, _DomainState] = {}
        self._pending_total = 0
        self._enabled = frozenset(config.protocols)
        self._released: list[FlowRecord] = []  # records of held sets whose template just came
        self._last_data_records = 0  # data records in the message being decoded (IPFIX sequence)
        self._held = False  # a data set of this message waits for its template: count unknown

    def exporter_stats(self, exporter: str) -> ExporterStats:
        stats = self.stats.get(exporter)
        if stats is None:
            stats = self.stats[exporter] = ExporterStats()
        return stats

    def template_count(self) -> int:
        return len(self._templates)

    def decode(self, data: bytes, exporter: str, now: float) -> list[FlowRecord] | None:
        """One datagram from `exporter` received at `now` (Unix seconds).

        Returns the records (possibly none), None for an unknown or disabled version; raises
        MalformedPacket (counted in the exporter's `malformed`).
        """
        if len(data) < 2:
            raise self._count_malformed(exporter, _truncated("export version"))
        version = data[0] << 8 | data[1]
        name = {5: NETFLOW5, 9: NETFLOW9, 10: IPFIX}.get(version)
        if name is None or name not in self._enabled:
            return None
        stats = self.exporter_stats(exporter)
        stats.datagrams += 1
        try:
            if version == 5:
                sequence, count, records = decode_v5(data)
                engine = data[20] << 8 | data[21]  # engine type and id: one sequence each
                self._sequence(stats, (exporter, 5, engine), sequence, count)
            elif version == 9:
                records = self._decode_v9(data, exporter, stats, now)
            else:
                records = self._decode_ipfix(data, exporter, stats, now)
        except MalformedPacket as exc:
            stats.malformed += 1
            self._released.clear()
            raise exc from None
        if self._released:
            records.extend(self._released)
            self._released.clear()
        stats.records += len(records)
        return records

    def _count_malformed(self, exporter: str, exc: MalformedPacket) -> MalformedPacket:
        self.exporter_stats(exporter).malformed += 1
        return exc

    def _sequence(self, stats: ExporterStats, domain: Domain, sequence: int, advance: int) -> None:
        """Counts lost export packets (v9) or records (v5, IPFIX) from the sequence numbers."""
        state = self._domain(domain)
        expected = state.sequence
        if expected is not None and sequence != expected:
            gap = (sequence - expected) & 0xFFFFFFFF
            # A small step back is reordering or a restarted exporter, not 4 billion lost.
            if gap < 0x80000000:
                stats.sequence_gaps += gap
        state.sequence = (sequence + advance) & 0xFFFFFFFF

    def _domain(self, domain: Domain) -> _DomainState:
        state = self._domains.get(domain)
        if state is None:
            if len(self._domains) >= self.config.max_templates:
                # Bounded like the templates: forget the oldest domain's state.
                oldest = next(iter(self._domains))
                dropped = len(self._domains.pop(oldest).pending)
                self._pending_total -= dropped
                self.exporter_stats(oldest[0]).unknown_template += dropped
            state = self._domains[domain] = _DomainState()
        return state

    # --- NetFlow v9 (RFC 3954) -------------------------------------------------------------------

    def _decode_v9(self, data: bytes, exporter: str, stats: ExporterStats, now: float
                   ) -> list[FlowRecord]:
        if len(data) < V9_HEADER.size:
            raise _truncated("netflow9 header")
        _v, _count, uptime, secs, sequence, source = V9_HEADER.unpack_from(data)
        domain = (exporter, 9, source)
        # RFC 3954 section 5.1: the sequence counts export packets.
        self._sequence(stats, domain, sequence, 1)
        clock = (secs * 1000, uptime)  # IEs 21/22 are relative to this sysUpTime
        return self._sets(data, V9_HEADER.size, len(data), domain, stats, now, clock, ipfix=False)

    # --- IPFIX (RFC 7011) ------------------------------------------------------------------------

    def _decode_ipfix(self, data: bytes, exporter: str, stats: ExporterStats, now: float
                      ) -> list[FlowRecord]:
        if len(data) < IPFIX_HEADER.size:
            raise _truncated("ipfix header")
        _v, length, export_time, sequence, domain_id = IPFIX_HEADER.unpack_from(data)
        # RFC 7011 section 3.1: the length covers the whole message, header included.
        if length < IPFIX_HEADER.size:
            raise _malformed("ipfix length")
        if length > len(data):
            raise _truncated("ipfix message")
        domain = (exporter, 10, domain_id)
        # Times come from IEs 152/153 or 150/151, or 21/22 with IE 160 (the uptime then follows).
        clock = (export_time * 1000, -1)
        records = self._sets(data, IPFIX_HEADER.size, length, domain, stats, now, clock, ipfix=True)
        # Section 3.1: the sequence counts data records sent before this message, options included.
        self._sequence(stats, domain, sequence, self._last_data_records)
        if self._held:
            # How many records the held set holds is unknown: the next message sets the count anew.
            self._domain(domain).sequence = None
        return records

    # --- sets, shared --------------------------------------------------------------------------

    def _sets(self, data: bytes, offset: int, end: int, domain: Domain, stats: ExporterStats,
              now: float, clock: Clock, ipfix: bool) -> list[FlowRecord]:
        template_set, options_set = (2, 3) if ipfix else (0, 1)
        records: list[FlowRecord] = []
        self._last_data_records = 0
        self._held = False
        self.expire(now)
        while offset + 4 <= end:
            set_id, length = SET_HEADER.unpack_from(data, offset)
            # RFC 7011 section 3.3.2 / RFC 3954 section 5.2: the length includes the set header.
            if length < 4:
                raise _malformed("set length")
            if offset + length > end:
                raise _truncated("set")
            body, body_end = offset + 4, offset + length
            offset = body_end
            if set_id == template_set:
                self._templates_in(data, body, body_end, domain, stats, now, ipfix, options=False)
            elif set_id == options_set:
                self._templates_in(data, body, body_end, domain, stats, now, ipfix, options=True)
            elif set_id >= 256:
                chunk = data[body:body_end]
                template = self._template(domain, set_id, now)
                if template is None:
                    self._hold(domain, set_id, chunk, now, clock)
                else:
                    self._data(chunk, template, domain, clock, records)
            # Set ids 4..255 are reserved (RFC 7011 section 3.3.2): skipped by length.
        return records

    def _template(self, domain: Domain, template_id: int, now: float) -> _Template | None:
        template = self._templates.get((domain, template_id))
        if template is not None and now - template.stored > self.config.template_timeout:
            del self._templates[(domain, template_id)]
            return None
        return template

    def _templates_in(self, data: bytes, offset: int, end: int, domain: Domain,
                      stats: ExporterStats, now: float, ipfix: bool, options: bool) -> None:
        ipfix_options = ipfix and options
        header = 6 if options and not ipfix else 4
        # What is left after the last template is padding (RFC 7011 section 3.3.1), shorter than a
        # template header.
        while end - offset >= header:
            template_id, count = SET_HEADER.unpack_from(data, offset)
            offset += header
            scope_count = 0
            if options and not ipfix:
                # RFC 3954 section 6.1: scope and option lengths in bytes, four per field.
                scope_len, option_len = count, U16.unpack_from(data, offset - 2)[0]
                if scope_len % 4 or option_len % 4:
                    raise _malformed("netflow9 options template lengths")
                scope_count, count = scope_len // 4, (scope_len + option_len) // 4
            if count == 0 and ipfix:
                # RFC 7011 section 8.1: a withdrawal (field count 0, no scope count); the set's own
                # id as template id withdraws all the domain's templates.
                if template_id in (2, 3):
                    for key in [k for k in self._templates if k[0] == domain]:
                        del self._templates[key]
                else:
                    self._templates.pop((domain, template_id), None)
                continue
            if template_id < 256:
                raise _malformed("template id")
            if ipfix_options:
                if offset + 2 > end:
                    raise _truncated("options template scope count")
                (scope_count,) = U16.unpack_from(data, offset)
                offset += 2
            if count == 0:
                raise _malformed("template field count")  # RFC 3954 has no withdrawal
            if scope_count > count or (ipfix_options and scope_count == 0):
                raise _malformed("options template scope count")
            fields, offset = parse_template_fields(data, offset, end, count, ipfix)
            if len(self._templates) >= self.config.max_templates and (
                (domain, template_id) not in self._templates
            ):
                oldest = min(self._templates, key=lambda k: self._templates[k].stored)
                del self._templates[oldest]
            template = _make_template(fields, options, now)
            self._templates[(domain, template_id)] = template
            stats.templates += 1
            self._release(domain, template_id, template)

    # --- held data sets ------------------------------------------------------------------------

    def _hold(self, domain: Domain, set_id: int, chunk: bytes, now: float, clock: Clock) -> None:
        state = self._domain(domain)
        self._held = True
        if self._pending_total >= self.config.max_pending:
            self.exporter_stats(domain[0]).unknown_template += 1
            return
        state.pending.append((now + self.config.pending_timeout, set_id, chunk, clock))
        self._pending_total += 1

    def _release(self, domain: Domain, template_id: int, template: _Template) -> None:
        state = self._domains.get(domain)
        if state is None or not state.pending:
            return
        kept: deque[tuple[float, int, bytes, Clock]] = deque()
        released: list[FlowRecord] = []
        counted = self._last_data_records  # released records were sent in an earlier message
        for item in state.pending:
            if item[1] == template_id:
                self._pending_total -= 1
                try:
                    self._data(item[2], template, domain, item[3], released)
                except MalformedPacket:
                    self.exporter_stats(domain[0]).malformed += 1
            else:
                kept.append(item)
        state.pending = kept
        self._last_data_records = counted
        self._released.extend(released)

    def expire(self, now: float) -> None:
        """Held data sets past their time are dropped and counted as `unknown_template`."""
        if not self._pending_total:
            return
        for domain, state in self._domains.items():
            pending = state.pending
            while pending and pending[0][0] <= now:
                pending.popleft()
                self._pending_total -= 1
                self.exporter_stats(domain[0]).unknown_template += 1

    # --- data records --------------------------------------------------------------------------

    def _data(self, chunk: bytes, template: _Template, domain: Domain, clock: Clock,
              out: list[FlowRecord]) -> None:
        fields = template.fields
        offset = 0
        end = len(chunk)
        state = self._domain(domain)
        if template.builder is not None:
            self._build(chunk, template.builder, state, clock, out)
            return
        options = template.options
        names = template.names
        if template.plan is not None:
            layout, keys = template.plan
            unpack = layout.unpack_from
            size = layout.size
            while end - offset >= size:
                self._one(dict(zip(keys, unpack(chunk, offset), strict=True)), options, names, state,
                          clock, out)
                offset += size
            return
        # Padding (RFC 7011 section 3.3.1; RFC 3954 section 5.3) is shorter than the smallest record.
        while end - offset >= template.minimum:
            values: dict[int, int | bytes] = {}
            for key, declared in fields:
                length = declared
                if declared == VARIABLE_LENGTH:
                    # RFC 7011 section 7: one length byte, or 255 then two.
                    if offset >= end:
                        raise _truncated("variable-length field")
                    length = chunk[offset]
                    offset += 1
                    if length == 255:
                        if offset + 2 > end:
                            raise _truncated("variable-length field")
                        length = chunk[offset] << 8 | chunk[offset + 1]
                        offset += 2
                if offset + length > end:
                    raise _truncated("data record")
                if key >= 0 and key not in values:
                    raw = chunk[offset:offset + length]
                    if key in RAW_KEYS:
                        values[key] = raw
                    elif length <= 8:
                        values[key] = int.from_bytes(raw, "big")
                offset += length
            self._one(values, options, names, state, clock, out)

    def _build(self, chunk: bytes, builder: _Builder, state: _DomainState, clock: Clock,
               out: list[FlowRecord]) -> None:
        """The records of a data set of a compiled template: what `_record` and `record_name`
        make of each, read in one struct pass. What follows the last whole record is padding."""
        layout, pick, times, names = builder
        count = len(chunk) // layout.size
        if not count:
            return
        self._last_data_records += count
        scale = state.sampling
        header_ms, uptime = clock
        if times == TIMES_UPTIME and uptime < 0:
            if state.system_init is None:
                times = TIMES_NONE  # IPFIX 21/22 without the exporter's start time: no times
            else:
                uptime = (header_ms - state.system_init) & 0xFFFFFFFF
        exported = header_ms / 1000.0
        new = tuple.__new__
        append = out.append
        absent = _ABSENT
        hostname = source = None
        for row in layout.iter_unpack(memoryview(chunk)[:count * layout.size]):
            (proto, src, sport, dst, dport, packets, octets, rpackets, roctets, time0, time1, flags,
             direction) = pick(row + absent)
            if times == TIMES_MS:
                first, last = time0 / 1000.0, time1 / 1000.0
            elif times == TIMES_UPTIME:
                # _uptime_time, inlined: sysUpTime milliseconds wrap at 2**32.
                delta = (uptime - (time0 & 0xFFFFFFFF)) & 0xFFFFFFFF
                if delta >= 0x80000000:
                    delta -= 0x100000000
                first = (header_ms - delta) / 1000.0
                delta = (uptime - (time1 & 0xFFFFFFFF)) & 0xFFFFFFFF
                if delta >= 0x80000000:
                    delta -= 0x100000000
                last = (header_ms - delta) / 1000.0
            elif times == TIMES_SECONDS:
                first, last = float(time0), float(time1)
            else:
                first = last = 0.0
            if not first:
                first = last = exported
            elif last < first:
                last = first
            if names:
                hostname, source = record_name({key: row[i] for key, i in names})
            append(new(FlowRecord, (
                proto, src, sport, dst, dport, packets * scale, octets * scale, rpackets * scale,
                roctets * scale, first, last, flags & 0xFF, direction, scale, hostname, source,
            )))

    def _one(self, values: dict[int, int | bytes], options: bool, names: bool, state: _DomainState,
             clock: Clock, out: list[FlowRecord]) -> None:
        if options:
            self._options(values, state)
            return
        record = self._record(values, state, clock)
        if record is not None and names:
            hostname, source = record_name(values)
            if hostname is not None:
                record = record._replace(hostname=hostname, hostname_source=source)
        if record is not None:
            out.append(record)
        self._last_data_records += 1

    def _options(self, values: dict[int, int | bytes], state: _DomainState) -> None:
        """Options data: the sampling interval and the exporter's start time."""
        self._last_data_records += 1
        interval = values.get(IE_SAMPLING_INTERVAL)
        packet_interval = values.get(IE_SAMPLING_PACKET_INTERVAL)
        space = values.get(IE_SAMPLING_PACKET_SPACE)
        if isinstance(interval, int):
            state.sampling = interval if interval > 1 else 1
        elif isinstance(packet_interval, int) and isinstance(space, int) and packet_interval > 0:
            # RFC 5476: take `interval` packets, skip `space`: one in (interval+space)/interval.
            state.sampling = max(1, round((packet_interval + space) / packet_interval))
        init = values.get(IE_SYSTEM_INIT_MS)
        if isinstance(init, int):
            state.system_init = init

    def _record(self, values: dict[int, int | bytes], state: _DomainState, clock: Clock
                ) -> FlowRecord | None:
        src = values.get(IE_SRC_V4)
        dst = values.get(IE_DST_V4)
        if not (isinstance(src, bytes) and isinstance(dst, bytes)):
            src = values.get(IE_SRC_V6)
            dst = values.get(IE_DST_V6)
            if not (isinstance(src, bytes) and isinstance(dst, bytes)):
                return None  # not an IP flow record (MAC-only, options we do not read)
        if len(src) not in (4, 16) or len(src) != len(dst):
            raise _malformed("address length")
        scale = state.sampling
        packets = _int(values, IE_PACKETS, IE_PACKETS_TOTAL) * scale
        octets = _int(values, IE_OCTETS, IE_OCTETS_TOTAL) * scale
        rpackets = _int(values, R_PACKETS, R_PACKETS_TOTAL) * scale
        roctets = _int(values, R_OCTETS, R_OCTETS_TOTAL) * scale
        first = last = 0.0
        start_ms = values.get(IE_START_MS)
        end_ms = values.get(IE_END_MS)
        if isinstance(start_ms, int) and isinstance(end_ms, int):
            first, last = start_ms / 1000.0, end_ms / 1000.0
        elif isinstance(values.get(IE_START_SECONDS), int):
            first = float(_int(values, IE_START_SECONDS, IE_START_SECONDS))
            last = float(_int(values, IE_END_SECONDS, IE_START_SECONDS))
        else:
            header_ms, uptime = clock
            if uptime < 0 and state.system_init is not None:
                # IPFIX: the exporter's uptime at export, from its start time (IE 160).
                uptime = (header_ms - state.system_init) & 0xFFFFFFFF
            fs = values.get(IE_FIRST_SWITCHED)
            ls = values.get(IE_LAST_SWITCHED)
            if uptime >= 0 and isinstance(fs, int) and isinstance(ls, int):
                first = _uptime_time(header_ms, uptime, fs & 0xFFFFFFFF)
                last = _uptime_time(header_ms, uptime, ls & 0xFFFFFFFF)
        if not first:
            first = last = clock[0] / 1000.0  # no time fields: the export time stands in
        direction = values.get(IE_DIRECTION)
        return FlowRecord(
            _int(values, IE_PROTOCOL, IE_PROTOCOL), src, _int(values, IE_SRC_PORT, IE_SRC_PORT),
            dst, _int(values, IE_DST_PORT, IE_DST_PORT), packets, octets, rpackets, roctets,
            first, max(first, last), _int(values, IE_TCP_FLAGS, IE_TCP_FLAGS) & 0xFF,
            direction if isinstance(direction, int) else None, scale,
        )


def record_name(values: dict[int, int | bytes]) -> tuple[str | None, str | None]:
    """The best name a record's fields carry, by `SOURCE_RANK`, and its source; (None, None).

    Every name goes through `clean_hostname`: control bytes, spaces, an over-long name or an
    address literal give no name. Fixed-length fields are padded with NUL bytes by exporters
    (nProbe's v9 strings): the padding goes first.
    """
    best: str | None = None
    best_source: str | None = None
    best_rank = -1
    for key, source in NAME_SOURCES.items():
        raw = values.get(key)
        rank = SOURCE_RANK[source]
        if not isinstance(raw, bytes) or rank <= best_rank:
            continue
        raw = raw.rstrip(b"\x00")
        # A Host value may carry a port or userinfo; an SNI or a DNS question is a bare name.
        name = (_host_of(raw) or None) if source == "http_host" else clean_hostname(raw)
        if name is not None:
            best, best_source, best_rank = name, source, rank
    return best, best_source


ADDRESS_KEYS = frozenset({IE_SRC_V4, IE_DST_V4, IE_SRC_V6, IE_DST_V6})
# Fields kept as bytes: addresses, and names (cleaned in record_name, never used raw).
RAW_KEYS = ADDRESS_KEYS | frozenset(NAME_SOURCES)
# The fields a flow record is made of (`Decoder._record`, `record_name`).
RECORD_KEYS = RAW_KEYS | {
    IE_OCTETS, IE_PACKETS, IE_PROTOCOL, IE_TCP_FLAGS, IE_SRC_PORT, IE_DST_PORT, IE_LAST_SWITCHED,
    IE_FIRST_SWITCHED, IE_DIRECTION, IE_OCTETS_TOTAL, IE_PACKETS_TOTAL, IE_START_SECONDS,
    IE_END_SECONDS, IE_START_MS, IE_END_MS, R_OCTETS, R_PACKETS, R_OCTETS_TOTAL, R_PACKETS_TOTAL,
}
# The fields read; the fast path skips the others without slicing them.
WANTED = RAW_KEYS | {
    IE_OCTETS, IE_PACKETS, IE_PROTOCOL, IE_TCP_FLAGS, IE_SRC_PORT, IE_DST_PORT, IE_LAST_SWITCHED,
    IE_FIRST_SWITCHED, IE_SAMPLING_INTERVAL, IE_DIRECTION, IE_OCTETS_TOTAL, IE_PACKETS_TOTAL,
    IE_START_SECONDS, IE_END_SECONDS, IE_START_MS, IE_END_MS, IE_SYSTEM_INIT_MS,
    IE_SAMPLING_PACKET_INTERVAL, IE_SAMPLING_PACKET_SPACE, R_OCTETS, R_PACKETS, R_OCTETS_TOTAL,
    R_PACKETS_TOTAL,
}


def _int(values: dict[int, int | bytes], key: int, fallback: int) -> int:
    value = values.get(key)
    if not isinstance(value, int):
        value = values.get(fallback)
    return value if isinstance(value, int) else 0

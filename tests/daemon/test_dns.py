"""DNS message parsing: corpus captures, hand-made attacks, and fuzzing of the three-outcome contract."""

from __future__ import annotations

import ipaddress
import itertools
import json
import struct
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.dissect import MalformedPacket
from douane.daemon.dns import (
    MAX_CNAME_HOPS,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    DnsAnswer,
    DnsMessage,
    address_names,
    looks_like_dns,
    parse_dns,
    parse_dns_tcp,
    read_answers,
)
from douane.daemon.hostname import clean_hostname

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
DNS_PCAPS = (
    "dns.pcap", "dns_ambiguous_names.pcap", "dns-google-nsid.pcapng", "dns_fragmented.pcap",
    "dns_long_domainname.pcap", "dns-invalid-chars.pcap", "mullvad_dns.pcap", "tk.pcap",
    "punycode-idn.pcap", "conncheck.pcap", "android.pcap",
)
needs_corpus = pytest.mark.skipif(not (CORPUS / "expected.jsonl").is_file(), reason="no shared corpus")

# --- message builders (RFC 1035 4.1) -----------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """An uncompressed name: length-prefixed labels, then the root label."""
    out = b""
    for label in name.split(".") if name else []:
        out += bytes([len(label)]) + label.encode("latin-1")
    return out + b"\x00"


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A resource record: owner name (already encoded), type, class IN, ttl, rdlength, rdata."""
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def message(questions: list[tuple[str, int]], answers: list[bytes], *, ident: int = 0x1234,
            flags: int = 0x8180, counts: tuple[int, int] | None = None) -> bytes:
    """A DNS message: header (flags 0x8180 = response, RD, RA, NOERROR), questions, answer records."""
    qd, an = counts if counts is not None else (len(questions), len(answers))
    body = b"".join(encode_name(name) + struct.pack("!HH", qtype, 1) for name, qtype in questions)
    return struct.pack("!HHHHHH", ident, flags, qd, an, 0, 0) + body + b"".join(answers)


HEADER_1Q = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0)  # a response header with one question


def ptr(offset: int) -> bytes:
    """A compression pointer (RFC 1035 4.1.4): 11 then a 14-bit offset."""
    return struct.pack("!H", 0xC000 | offset)


# A response as a resolver sends it for an Azure Blob Storage name, written out field by field.
# It is the seed of the fuzzers, so they start from a real shape even when the corpus is absent.
AZURE = bytes.fromhex(
    "a1b2"  # ID
    "8180"  # flags: QR=1 (response), opcode 0, RD=1, RA=1, RCODE 0 (NOERROR)
    "0001"  # QDCOUNT 1
    "0002"  # ANCOUNT 2
    "0000"  # NSCOUNT 0
    "0000"  # ARCOUNT 0
    # question at offset 12: hdh.blob.core.windows.net ("core" starts at offset 21)
    "03686468"  # 3 "hdh"
    "04626c6f62"  # 4 "blob"
    "04636f7265"  # 4 "core" (offset 21)
    "0777696e646f7773"  # 7 "windows"
    "036e6574"  # 3 "net"
    "00"  # root
    "0001"  # QTYPE A
    "0001"  # QCLASS IN
    # answer 1 at offset 43
    "c00c"  # owner: pointer to offset 12 (the question name)
    "0005"  # TYPE CNAME
    "0001"  # CLASS IN
    "0000003c"  # TTL 60
    "0013"  # RDLENGTH 19
    "10626c6f62706172323170726473747230"  # offset 55: 16 "blobpar21prdstr0"
    "c015"  # pointer to offset 21: "core.windows.net"
    # answer 2 at offset 74
    "c037"  # owner: pointer to offset 55 (the CNAME target)
    "0001"  # TYPE A
    "0001"  # CLASS IN
    "00000e10"  # TTL 3600
    "0004"  # RDLENGTH 4
    "14c77807"  # 20.199.120.7
)


class TestFixture:
    def test_azure_response(self) -> None:
        """The hand-written response decodes to the CNAME chain and address its comments describe."""
        msg = parse_dns(AZURE)
        assert msg == DnsMessage(
            id=0xA1B2, response=True, rcode=0,
            questions=(("hdh.blob.core.windows.net", TYPE_A),),
            answers=(
                DnsAnswer("hdh.blob.core.windows.net", TYPE_CNAME, 60, "blobpar21prdstr0.core.windows.net"),
                DnsAnswer("blobpar21prdstr0.core.windows.net", TYPE_A, 3600, bytes([20, 199, 120, 7])),
            ),
        )
        assert address_names(msg) == [(bytes([20, 199, 120, 7]), "hdh.blob.core.windows.net", 60)]


# --- corpus ---------------------------------------------------------------------------------------

FlowKey = tuple[str, frozenset[tuple[str, int]]]


def _segments(path: Path) -> Iterator[tuple[FlowKey, tuple[str, int], int, bytes]]:
    """(flow key, sender, sequence or -1 for UDP, payload) of each DNS datagram or TCP segment,
    with IPv4 and IPv6 fragments reassembled (the corpus has fragmented responses)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether
    from scapy.layers.ppp import PPPoE  # registers PPPoE/PPP dissection (dns.pcap)
    from scapy.utils import rdpcap

    assert PPPoE is not None

    pending: dict[tuple[object, ...], list[tuple[int, bool, bytes]]] = defaultdict(list)
    for frame in rdpcap(str(path)):
        pkt = frame
        if IP not in pkt and IPv6 not in pkt and isinstance(pkt, Ether):
            # scapy stops at tags it does not know (QinQ 0x9100 in dns.pcap): walk them here.
            raw, off = bytes(pkt), 14
            while raw[off - 2 : off] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
                off += 4
            etype = raw[off - 2 : off]
            if etype not in (b"\x08\x00", b"\x86\xdd"):
                continue
            pkt = IP(raw[off:]) if etype == b"\x08\x00" else IPv6(raw[off:])
        if IP in pkt:
            ip = pkt[IP]
            src, dst = ip.src, ip.dst
            data = bytes(ip)[ip.ihl * 4 : ip.len]
            proto = ip.proto
            fragmented = ip.flags.MF or ip.frag
            frag = (ip.frag * 8, bool(ip.flags.MF), (src, dst, ip.id, proto)) if fragmented else None
        elif IPv6 in pkt:
            src, dst = pkt[IPv6].src, pkt[IPv6].dst
            if IPv6ExtHdrFragment in pkt:
                fh = pkt[IPv6ExtHdrFragment]
                data, proto = bytes(fh.payload), fh.nh
                frag = (fh.offset * 8, bool(fh.m), (src, dst, fh.id, proto))
            else:
                layer = pkt[UDP] if UDP in pkt else pkt[TCP] if TCP in pkt else None  # noqa: SIM401 (not a dict)
                if layer is None:
                    continue
                data, proto, frag = bytes(layer), 17 if UDP in pkt else 6, None
        else:
            continue
        if frag is not None:
            offset, more, key = frag
            pending[key].append((offset, more, data))
            parts = sorted(pending[key])
            if parts[-1][1]:
                continue  # the last fragment has not arrived
            joined = b""
            for part_offset, _more, part in parts:
                if part_offset != len(joined):
                    break
                joined += part
            else:
                del pending[key]
                data = joined
            if key in pending:
                continue
        if proto == 17 and len(data) >= 8:
            sport, dport = struct.unpack("!HH", data[:4])
            key2: FlowKey = ("udp", frozenset({(src, sport), (dst, dport)}))
            if 53 in (sport, dport) or 5353 in (sport, dport):
                yield key2, (src, sport), -1, data[8:]
        elif proto == 6 and len(data) >= 20:
            sport, dport, seq, _ack, off = struct.unpack("!HHIIB", data[:13])
            payload = data[(off >> 4) * 4 :]
            if 53 in (sport, dport) and payload:
                yield ("tcp", frozenset({(src, sport), (dst, dport)})), (src, sport), seq, payload


@cache
def corpus_messages(name: str) -> dict[FlowKey, list[tuple[tuple[str, int], DnsMessage]]]:
    """Every DNS message of a capture, by flow, with its sender."""
    flows: dict[FlowKey, list[tuple[tuple[str, int], DnsMessage]]] = defaultdict(list)
    streams: dict[tuple[FlowKey, tuple[str, int]], dict[int, bytes]] = defaultdict(dict)
    for key, sender, seq, payload in _segments(CORPUS / "pcap" / name):
        if seq < 0:
            flows[key].append((sender, parse_dns(payload)))
        else:
            streams[key, sender][seq] = payload  # retransmissions replace themselves
    for (key, sender), segments in streams.items():
        stream = b"".join(segments[seq] for seq in sorted(segments))
        offset = 0
        while offset < len(stream):
            msg, used = parse_dns_tcp(stream[offset:])
            assert msg is not None, f"{name}: incomplete DNS message over TCP"
            flows[key].append((sender, msg))
            offset += used
    return flows


def expected_dns_flows() -> list[dict[str, object]]:
    if not (CORPUS / "expected.jsonl").is_file():
        return []
    records = [json.loads(line) for line in (CORPUS / "expected.jsonl").read_text().splitlines() if line]
    return [r for r in records if r["pcap"] in DNS_PCAPS and r.get("hostname_kind") == "dns_query"]


def _flow_id(record: dict[str, object]) -> str:
    return f"{record['pcap']}#{record['ndpi_flow_index']}"


def _key(record: dict[str, object]) -> FlowKey:
    return (str(record["proto"]), frozenset({(str(record["src"]), int(record["sport"])),  # type: ignore[call-overload]
                                             (str(record["dst"]), int(record["dport"]))}))  # type: ignore[call-overload]


def _text(answer: DnsAnswer) -> str:
    if answer.rtype == TYPE_CNAME:
        return str(answer.data)
    assert isinstance(answer.data, bytes)
    return str(ipaddress.ip_address(answer.data))


TYPE_NAMES = {TYPE_A: "A", TYPE_AAAA: "AAAA", TYPE_CNAME: "CNAME"}


@needs_corpus
class TestCorpus:
    """The shared corpus (nDPI's DNS captures, checked against tshark's answer sections)."""

    @pytest.mark.parametrize("record", expected_dns_flows(), ids=_flow_id)
    def test_query_name(self, record: dict[str, object]) -> None:
        """The first question of the flow is the name nDPI and tshark saw, or an invalid name is dropped."""
        messages = corpus_messages(str(record["pcap"]))[_key(record)]
        assert messages, "no DNS message parsed for this flow"
        seen = (record["tshark_check"] or {}).get("hostname_seen")  # type: ignore[attr-defined]
        first = messages[0][1].questions
        if clean_hostname(str(seen)) is None:
            # dns-invalid-chars ("\\004" bytes), dns_ambiguous_names ("*.teams.microsoft.com"):
            # the question is dropped rather than passed on.
            assert all(clean_hostname(q) == q for _s, m in messages for q, _t in m.questions)
            assert not [q for q, _t in first if q == seen]
        else:
            assert first[0][0] == seen

    @pytest.mark.parametrize("record", expected_dns_flows(), ids=_flow_id)
    def test_answers_match_tshark(self, record: dict[str, object]) -> None:
        """The A/AAAA/CNAME answers equal tshark's answer section, minus records with invalid names."""
        messages = corpus_messages(str(record["pcap"]))[_key(record)]
        expected = [
            (r["name"], r["type"], r["data"])
            for r in record["tshark_check"]["dns_answer_records"]  # type: ignore[index]
            if r["type"] in ("A", "AAAA", "CNAME")
        ]
        ours = [
            (a.name, TYPE_NAMES[a.rtype], _text(a))
            for _sender, msg in messages if msg.response for a in msg.answers
        ]
        valid = [
            e for e in expected
            if clean_hostname(e[0]) == e[0] and (e[1] != "CNAME" or clean_hostname(e[2]))
        ]
        assert ours == valid
        for name, _type, _data in ours:
            assert clean_hostname(name) == name

    @pytest.mark.parametrize("record", expected_dns_flows(), ids=_flow_id)
    def test_address_names(self, record: dict[str, object]) -> None:
        """Every A/AAAA address of the flow maps to the question name the client asked."""
        messages = corpus_messages(str(record["pcap"]))[_key(record)]
        expected = {
            r["data"] for r in record["tshark_check"]["dns_answer_records"]  # type: ignore[index]
            if r["type"] in ("A", "AAAA") and clean_hostname(r["name"]) == r["name"]
        }
        pairs = [(str(ipaddress.ip_address(a)), n) for _s, m in messages for a, n, _ttl in address_names(m)]
        assert {address for address, _name in pairs} == expected
        questions = {q for _s, m in messages for q, _t in m.questions}
        assert all(name in questions for _address, name in pairs)
        if expected and len(questions) == 1:
            assert {name for _a, name in pairs} == {record["hostname"]}

    def test_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Summarise the corpus comparison, listing what is left out and why."""
        records = expected_dns_flows()
        lines = []
        matched = 0
        for record in records:
            messages = corpus_messages(str(record["pcap"]))[_key(record)]
            first = messages[0][1].questions if messages else ()
            if first and first[0][0] == record["hostname"]:
                matched += 1
            else:
                reason = "query name is not a valid host name, dropped" if not first else "different name"
                lines.append(f"  {_flow_id(record)} {record['hostname']!r}: {reason}")
        with capsys.disabled():
            print(f"\nDNS corpus: {matched}/{len(records)} query names equal nDPI's hostname")
            print("\n".join(lines))
        assert matched >= len(records) - 2

    def test_fragmented_first_fragment(self) -> None:
        """A fragmented response's first fragment alone gives its leading answers with partial=True."""
        whole = {
            m.id: m for messages in corpus_messages("dns_fragmented.pcap").values() for _s, m in messages
        }
        firsts = list(_first_fragments(CORPUS / "pcap" / "dns_fragmented.pcap"))
        assert len(firsts) >= 5
        for payload in firsts:
            cut = parse_dns(payload, partial=True)
            full = whole[cut.id]
            assert cut.questions == full.questions
            assert cut.answers == full.answers[: len(cut.answers)]
            try:
                # Strictly, the cut is seen only if it falls before the end of the answer section
                # (the authority and additional sections are not read).
                assert parse_dns(payload) == full
            except MalformedPacket as error:
                assert error.reason == "truncated"


def _first_fragments(path: Path) -> Iterator[bytes]:
    """The DNS bytes of each first fragment (offset 0, more fragments) of a UDP datagram."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6ExtHdrFragment
    from scapy.utils import rdpcap

    for pkt in rdpcap(str(path)):
        if IPv6ExtHdrFragment in pkt:
            fh = pkt[IPv6ExtHdrFragment]
            if fh.offset == 0 and fh.m and fh.nh == 17:
                yield bytes(fh.payload)[8:]
        elif IP in pkt and pkt[IP].flags.MF and pkt[IP].frag == 0 and pkt[IP].proto == 17:
            yield bytes(pkt[IP])[pkt[IP].ihl * 4 + 8 : pkt[IP].len]


# --- hand-made messages and attacks -----------------------------------------------------------------


class TestParseDns:
    def test_query(self) -> None:
        """A query parses with its question and no answers."""
        msg = parse_dns(message([("www.doctolib.fr", TYPE_A)], [], flags=0x0100))
        assert (msg.response, msg.rcode, msg.questions, msg.answers) == (
            False, 0, (("www.doctolib.fr", TYPE_A),), (),
        )

    def test_names_are_lower_cased(self) -> None:
        """Names come out as clean_hostname makes them: lower case, no trailing dot."""
        msg = parse_dns(message([("WWW.Doctolib.FR", TYPE_A)], []))
        assert msg.questions == (("www.doctolib.fr", TYPE_A),)

    def test_other_types_are_skipped(self) -> None:
        """MX, TXT and RRSIG records are skipped by their length; the A record after them is read."""
        owner = ptr(12)
        answers = [
            rr(owner, 15, 60, b"\x00\x0a" + encode_name("mx.example.org")),  # MX
            rr(owner, 16, 60, b"\x05hello"),  # TXT
            rr(owner, 46, 60, b"\x00" * 40),  # RRSIG
            rr(owner, TYPE_A, 60, b"\xc6\x33\x64\x07"),
        ]
        msg = parse_dns(message([("example.org", TYPE_A)], answers))
        assert msg.answers == (DnsAnswer("example.org", TYPE_A, 60, b"\xc6\x33\x64\x07"),)

    def test_aaaa(self) -> None:
        """An AAAA record carries its 16 raw address bytes."""
        address = ipaddress.ip_address("2001:db8::7").packed
        msg = parse_dns(message([("example.org", TYPE_AAAA)], [rr(ptr(12), TYPE_AAAA, 30, address)]))
        assert msg.answers[0].data == address
        assert address_names(msg) == [(address, "example.org", 30)]

    def test_invalid_owner_skips_the_record_only(self) -> None:
        """A record whose owner has control bytes is dropped; the other records stay."""
        bad = encode_name("www.allyourbase\x01\x02.cn")
        good = encode_name("example.org")
        answers = [rr(bad, TYPE_A, 60, b"\x01\x02\x03\x04"), rr(good, TYPE_A, 60, b"\x05\x06\x07\x08")]
        msg = parse_dns(message([("example.org", TYPE_A)], answers))
        assert msg.answers == (DnsAnswer("example.org", TYPE_A, 60, b"\x05\x06\x07\x08"),)

    def test_dot_inside_a_label_is_not_a_name(self) -> None:
        """A label holding a dot would read as two labels once joined: the name is refused."""
        name = b"\x07a.b.com\x00"  # one label "a.b.com"
        raw = HEADER_1Q + name + b"\x00\x01\x00\x01"
        assert parse_dns(raw).questions == ()

    def test_invalid_question_is_dropped(self) -> None:
        """A question whose name is not a host name ('*' label) is left out, not the message."""
        msg = parse_dns(message([("*.teams.microsoft.com", TYPE_A)], []))
        assert msg.questions == ()

    def test_cname_target_outside_rdata_is_malformed(self) -> None:
        """A CNAME whose name does not end where its RDLENGTH says is refused."""
        rdata = encode_name("target.example.org") + b"\x00"  # one octet too many
        with pytest.raises(MalformedPacket, match="CNAME record length"):
            parse_dns(message([("example.org", TYPE_CNAME)], [rr(ptr(12), TYPE_CNAME, 60, rdata)]))

    def test_wrong_address_length_is_malformed(self) -> None:
        """An A record of 5 octets is refused (RFC 1035 3.4.1: exactly 4)."""
        with pytest.raises(MalformedPacket, match="A record length"):
            parse_dns(message([("example.org", TYPE_A)], [rr(ptr(12), TYPE_A, 60, b"\x01\x02\x03\x04\x05")]))

    def test_negative_ttl_reads_as_zero(self) -> None:
        """A TTL with its top bit set is zero (RFC 2181 section 8)."""
        record = rr(ptr(12), TYPE_A, 0x80000001, b"\x01\x02\x03\x04")
        msg = parse_dns(message([("example.org", TYPE_A)], [record]))
        assert msg.answers[0].ttl == 0


class TestAttacks:
    def test_pointer_to_itself(self) -> None:
        """A pointer at offset 12 pointing to offset 12 is a loop, refused."""
        raw = HEADER_1Q + ptr(12) + b"\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="pointer chain"):
            parse_dns(raw)

    def test_two_pointer_loop(self) -> None:
        """Two pointers to each other loop; the hop limit stops them."""
        # offset 12: label "a" then pointer to 17; offset 17: label "b" then pointer to 12.
        name = b"\x01a" + ptr(17) + b"\x00" + b"\x01b" + ptr(12)
        raw = HEADER_1Q + name + b"\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket):
            parse_dns(raw)

    def test_thousand_pointer_chain(self) -> None:
        """1,000 pointers, each pointing to the one before it, are refused after the hop limit."""
        question = encode_name("example.org") + b"\x00\x01\x00\x01"  # offset 12
        # Answer 1, a TXT record (skipped by its length), carries the chain in its RDATA: pointer 0
        # points to the question name, pointer i to pointer i-1.
        chain_start = 12 + len(question) + 2 + 10  # after answer 1's owner pointer and fixed fields
        chain = ptr(12) + b"".join(ptr(chain_start + 2 * (i - 1)) for i in range(1, 1000))
        txt = rr(ptr(12), 16, 60, chain)
        # Answer 2's owner is the last pointer: reading it walks the whole chain.
        last = chain_start + 2 * 999
        a_record = ptr(last) + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + b"\x01\x02\x03\x04"
        raw = struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0) + question + txt + a_record
        with pytest.raises(MalformedPacket, match="pointer chain"):
            parse_dns(raw)
        # The same chain cut to 100 pointers is within the limit and reads the question name.
        short = chain_start + 2 * 99
        raw = raw[: -len(a_record)] + ptr(short) + a_record[2:]
        assert parse_dns(raw).answers == (DnsAnswer("example.org", TYPE_A, 60, b"\x01\x02\x03\x04"),)

    def test_pointer_into_header(self) -> None:
        """A pointer below offset 12 points into the header, never at a name."""
        raw = HEADER_1Q + ptr(4) + b"\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="header"):
            parse_dns(raw)

    def test_pointer_past_the_end(self) -> None:
        """A pointer beyond the message is cut short."""
        raw = HEADER_1Q + ptr(0x3FFF) + b"\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="truncated"):
            parse_dns(raw)

    def test_name_longer_than_255(self) -> None:
        """Five labels of 63 octets exceed RFC 1035's 255-octet limit."""
        raw = HEADER_1Q + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="255"):
            parse_dns(raw)

    def test_long_name_through_pointers(self) -> None:
        """Labels joined through pointers count towards the 255-octet limit too."""
        # offset 12: 63-octet label, pointer to 12 again: grows until the length check (not hops) stops it.
        raw = HEADER_1Q + b"\x3f" + b"a" * 63 + ptr(12) + b"\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="255"):
            parse_dns(raw)

    @pytest.mark.parametrize("length_octet", [0x40, 0x80, 0xBF])
    def test_reserved_label_types(self, length_octet: int) -> None:
        """Length octets 01xxxxxx and 10xxxxxx (RFC 6891 extended labels) are refused."""
        raw = HEADER_1Q + bytes([length_octet]) + b"a" * 70 + b"\x00\x00\x01\x00\x01"
        with pytest.raises(MalformedPacket, match="label type"):
            parse_dns(raw)

    def test_oversized_counts(self) -> None:
        """65,535 questions and answers in a 40-octet message are refused before any loop."""
        raw = message([("example.org", TYPE_A)], [], counts=(0xFFFF, 0xFFFF))
        with pytest.raises(MalformedPacket, match="counts"):
            parse_dns(raw)

    def test_oversized_counts_partial(self) -> None:
        """With partial=True, oversized counts stop at the end of the bytes."""
        record = rr(ptr(12), TYPE_A, 60, b"\x01\x02\x03\x04")
        raw = message([("example.org", TYPE_A)], [record], counts=(1, 0xFFFF))
        msg = parse_dns(raw, partial=True)
        assert len(msg.answers) == 1

    def test_oversized_rdlength(self) -> None:
        """An RDLENGTH beyond the message is cut short."""
        raw = message([("example.org", TYPE_A)], [ptr(12) + struct.pack("!HHIH", 16, 1, 60, 0xFFFF) + b"x"])
        with pytest.raises(MalformedPacket, match="truncated"):
            parse_dns(raw)

    def test_message_longer_than_65535(self) -> None:
        """No DNS message is longer than the TCP length prefix can say."""
        with pytest.raises(MalformedPacket, match="65535"):
            parse_dns(AZURE + b"\x00" * 65_536)

    def test_every_prefix_is_truncated(self) -> None:
        """Each strict prefix of a response raises; with partial=True it gives a prefix of the answers."""
        full = parse_dns(AZURE)
        for cut in range(len(AZURE)):
            with pytest.raises(MalformedPacket):
                parse_dns(AZURE[:cut])
            if cut >= 12:
                msg = parse_dns(AZURE[:cut], partial=True)
                assert msg.answers == full.answers[: len(msg.answers)]


class TestParseDnsTcp:
    def framed(self, raw: bytes) -> bytes:
        return struct.pack("!H", len(raw)) + raw

    def test_needs_more(self) -> None:
        """Fewer bytes than the length prefix announces give (None, 0), at every cut."""
        stream = self.framed(AZURE)
        for cut in range(len(stream)):
            assert parse_dns_tcp(stream[:cut]) == (None, 0)

    def test_two_messages(self) -> None:
        """Back-to-back messages parse one at a time, each reporting the bytes it used."""
        query = message([("example.org", TYPE_A)], [], flags=0x0100)
        stream = self.framed(query) + self.framed(AZURE) + b"\x00"
        first, used = parse_dns_tcp(stream)
        assert first is not None and first.questions == (("example.org", TYPE_A),)
        second, used2 = parse_dns_tcp(stream[used:])
        assert second == parse_dns(AZURE)
        assert used + used2 == len(stream) - 1

    def test_short_length_prefix(self) -> None:
        """A length prefix below the 12-octet header is impossible."""
        with pytest.raises(MalformedPacket, match="length prefix"):
            parse_dns_tcp(b"\x00\x05hello")


class TestAddressNames:
    def test_cname_chain(self) -> None:
        """Each address at the end of a CNAME chain maps to the question name, TTL the smallest."""
        answers = [
            rr(encode_name("hdh.blob.core.windows.net"), TYPE_CNAME, 300,
               encode_name("a.store.core.windows.net")),
            rr(encode_name("a.store.core.windows.net"), TYPE_CNAME, 30, encode_name("b.trafficmanager.net")),
            rr(encode_name("b.trafficmanager.net"), TYPE_A, 600, b"\x14\x3c\x01\x02"),
            rr(encode_name("b.trafficmanager.net"), TYPE_A, 10, b"\x14\x3c\x01\x03"),
        ]
        msg = parse_dns(message([("hdh.blob.core.windows.net", TYPE_A)], answers))
        assert address_names(msg) == [
            (b"\x14\x3c\x01\x02", "hdh.blob.core.windows.net", 30),
            (b"\x14\x3c\x01\x03", "hdh.blob.core.windows.net", 10),
        ]

    def test_off_chain_answer_ignored(self) -> None:
        """An A record for a name the question does not lead to gives nothing."""
        answers = [rr(encode_name("bank.example"), TYPE_A, 60, b"\x01\x02\x03\x04")]
        msg = parse_dns(message([("example.org", TYPE_A)], answers))
        assert address_names(msg) == []

    def test_cname_loop(self) -> None:
        """A CNAME loop ends; the addresses of names on it still map."""
        answers = [
            rr(encode_name("a.example"), TYPE_CNAME, 60, encode_name("b.example")),
            rr(encode_name("b.example"), TYPE_CNAME, 60, encode_name("a.example")),
            rr(encode_name("b.example"), TYPE_A, 60, b"\x01\x02\x03\x04"),
        ]
        msg = parse_dns(message([("a.example", TYPE_A)], answers))
        assert address_names(msg) == [(b"\x01\x02\x03\x04", "a.example", 60)]

    def test_long_chain_is_cut(self) -> None:
        """A chain longer than MAX_CNAME_HOPS links stops following; the far address is not mapped."""
        names = [f"n{i}.example" for i in range(MAX_CNAME_HOPS + 3)]
        answers = [rr(encode_name(a), TYPE_CNAME, 60, encode_name(b)) for a, b in itertools.pairwise(names)]
        answers.append(rr(encode_name(names[-1]), TYPE_A, 60, b"\x01\x02\x03\x04"))
        msg = parse_dns(message([(names[0], TYPE_A)], answers))
        assert address_names(msg) == []

    def test_query_and_error(self) -> None:
        """A query, or an NXDOMAIN response, maps nothing."""
        answers = [rr(ptr(12), TYPE_A, 60, b"\x01\x02\x03\x04")]
        assert address_names(parse_dns(message([("example.org", TYPE_A)], answers, flags=0x0100))) == []
        assert address_names(parse_dns(message([("example.org", TYPE_A)], answers, flags=0x8183))) == []


class TestLooksLikeDns:
    def test_real_messages(self) -> None:
        """A query and a response look like DNS."""
        assert looks_like_dns(AZURE)
        assert looks_like_dns(message([("example.org", TYPE_A)], [], flags=0x0100))

    @pytest.mark.parametrize("payload", [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"\xc3\x00\x00\x00\x01\x08" + b"\x00" * 60,  # QUIC long header
        b"",
        b"\x00" * 12,
    ])
    def test_not_dns(self, payload: bytes) -> None:
        """TLS, HTTP, QUIC and empty payloads do not look like DNS."""
        assert not looks_like_dns(payload)

    def test_opcode_and_counts(self) -> None:
        """An UPDATE (opcode 5), two questions, or counts beyond the size are refused."""
        assert not looks_like_dns(message([("example.org", TYPE_A)], [], flags=0x2800))
        assert not looks_like_dns(message([("a.example", TYPE_A), ("b.example", TYPE_A)], []))
        assert not looks_like_dns(message([("example.org", TYPE_A)], [], counts=(1, 500)))

    @needs_corpus
    def test_corpus(self) -> None:
        """Every message of the corpus with one question looks like DNS."""
        for name in DNS_PCAPS:
            for _key, _sender, _seq, payload in _segments(CORPUS / "pcap" / name):
                if _seq < 0 and payload[4:6] == b"\x00\x01":
                    assert looks_like_dns(payload), name


# --- fuzzing -------------------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    seeds = [AZURE, message([("www.doctolib.fr", TYPE_A)], [], flags=0x0100)]
    if (CORPUS / "pcap").is_dir():
        for name in ("dns_ambiguous_names.pcap", "dns-invalid-chars.pcap", "dns_long_domainname.pcap"):
            seeds += [p for _k, _s, seq, p in _segments(CORPUS / "pcap" / name) if seq < 0][:6]
    return seeds


SEEDS = _seeds()


def _check(payload: bytes, partial: bool) -> None:
    try:
        msg = parse_dns(payload, partial=partial)
    except MalformedPacket:
        if partial:
            with pytest.raises(MalformedPacket):
                read_answers(payload)
        return
    if partial:
        # The packet path's shortcut says what the message and address_names say.
        first = msg.questions[0][0] if msg.questions else None
        assert read_answers(payload) == (msg.id, msg.response, first, address_names(msg))
    assert isinstance(msg, DnsMessage)
    for name, _qtype in msg.questions:
        assert clean_hostname(name) == name
    for answer in msg.answers:
        assert clean_hostname(answer.name) == answer.name
        assert answer.rtype in (TYPE_A, TYPE_AAAA, TYPE_CNAME)
        if isinstance(answer.data, str):
            assert clean_hostname(answer.data) == answer.data
        else:
            assert len(answer.data) == (4 if answer.rtype == TYPE_A else 16)
    for address, name, ttl in address_names(msg):
        assert len(address) in (4, 16) and clean_hostname(name) == name and ttl >= 0


class TestFuzz:
    @given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 600), tail=st.binary(max_size=200),
           partial=st.booleans())
    @example(seed=AZURE, cut=12, tail=b"\xc0\x0c", partial=False)
    @example(seed=AZURE, cut=len(AZURE), tail=b"", partial=True)
    def test_prefix_plus_random(self, seed: bytes, cut: int, tail: bytes, partial: bool) -> None:
        """A real prefix plus random bytes gives a valid message or MalformedPacket, nothing else."""
        _check(seed[:cut] + tail, partial)
        looks_like_dns(seed[:cut] + tail)

    @given(seed=st.sampled_from(SEEDS), flips=st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255)),
                                                         max_size=8))
    def test_mutations(self, seed: bytes, flips: list[tuple[int, int]]) -> None:
        """Real messages with bytes overwritten give a valid message or MalformedPacket."""
        data = bytearray(seed)
        for index, value in flips:
            if data:
                data[index % len(data)] = value
        _check(bytes(data), False)
        _check(bytes(data), True)

    @given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 600), tail=st.binary(max_size=100))
    def test_tcp(self, seed: bytes, cut: int, tail: bytes) -> None:
        """A framed stream gives (message, used), (None, 0) or MalformedPacket."""
        stream = struct.pack("!H", len(seed)) + seed
        stream = stream[:cut] + tail
        try:
            msg, used = parse_dns_tcp(stream)
        except MalformedPacket:
            return
        if msg is None:
            assert used == 0
        else:
            assert 14 <= used <= len(stream)

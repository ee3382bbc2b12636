"""douane.geo.asn_table and douane.geo.asn: the compiled ASN table, against pyasn as the oracle."""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyasn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from douane.geo import asn_table, embedded
from douane.geo.asn import AsNames, AsnDatabase, load_as_names
from douane.geo.asn_table import AsnTable
from douane.geo.files import DatabaseError

# The IPASN text the embedded table was compiled from (see geo/build_data.py --ipasn-out).
EMBEDDED_IPASN = Path(__file__).parent / "data" / "ipasn.dat.gz"

NESTED = (
    "; IP-ASN32-DAT file\n; Original source: nested test\n"
    "10.0.0.0/8\t100\n10.1.0.0/16\t200\n10.1.1.0/24\t300\n10.1.1.0/25\t300\n"
    "2001:db8::/32\t64500\n2001:db8:0:1::/64\t64501\n2001:db8:0:1:8000::/65\t64502\n"
    "2001:db8:0:1::10/124\t64503\n"
)


def table_of(text: str, source: str = "test") -> AsnTable:
    return asn_table.from_ipasn_lines(text.split("\n"), source)


def v4(value: int) -> str:
    return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))


def v6(value: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def write(tmp_path: Path, data: bytes, name: str = "asn.table") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


class TestAsnTable:
    def test_nested_prefixes(self, tmp_path: Path) -> None:
        """A /8 holding a /16 holding a /24: each address gets its most specific prefix's AS."""
        database = AsnDatabase.open(write(tmp_path, NESTED.encode(), "nested.dat"))
        expected = {
            "9.255.255.255": None, "10.0.0.0": 100, "10.0.255.255": 100, "10.1.0.0": 200,
            "10.1.0.255": 200, "10.1.1.0": 300, "10.1.1.255": 300, "10.1.2.0": 200,
            "10.1.255.255": 200, "10.2.0.0": 100, "10.255.255.255": 100, "11.0.0.0": None,
            "0.0.0.0": None, "255.255.255.255": None,
        }
        assert {address: database.lookup(address) for address in expected} == expected

    def test_ipv6_longer_than_64(self, tmp_path: Path) -> None:
        """Prefixes longer than /64 are told apart by the low 64 bits, exactly at their edges."""
        database = AsnDatabase.open(write(tmp_path, NESTED.encode(), "nested.dat"))
        expected = {
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff": None, "2001:db8::": 64500,
            "2001:db8:0:0:ffff:ffff:ffff:ffff": 64500, "2001:db8:0:1::": 64501, "2001:db8:0:1::f": 64501,
            "2001:db8:0:1::10": 64503, "2001:db8:0:1::1f": 64503, "2001:db8:0:1::20": 64501,
            "2001:db8:0:1:7fff:ffff:ffff:ffff": 64501, "2001:db8:0:1:8000::": 64502,
            "2001:db8:0:1:ffff:ffff:ffff:ffff": 64502, "2001:db8:0:2::": 64500,
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff": 64500, "2001:db9::": None, "::": None,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff": None,
        }
        assert {address: database.lookup(address) for address in expected} == expected

    def test_ranges_flattened_and_merged(self) -> None:
        """Nested prefixes become disjoint ranges; a /25 of the /24's own AS adds no range."""
        table = table_of(NESTED)
        starts = [v4(start) for start in table.v4_starts]
        assert starts == ["10.0.0.0", "10.1.0.0", "10.1.1.0", "10.1.2.0", "10.2.0.0", "11.0.0.0"]
        assert list(table.v4_asns) == [100, 200, 300, 200, 100, 0]
        assert table.prefixes == 8 and table.source == "test"

    def test_adjacent_prefixes_of_one_as_merge(self) -> None:
        """Two neighbouring /24s of one AS are one range; the space up to the end has no end marker."""
        table = table_of("1.0.0.0/24\t7\n1.0.1.0/24\t7\n255.255.255.0/24\t9\n")
        assert [v4(start) for start in table.v4_starts] == ["1.0.0.0", "1.0.2.0", "255.255.255.0"]
        assert list(table.v4_asns) == [7, 0, 9]

    def test_duplicate_prefix_last_wins_and_host_bits_ignored(self) -> None:
        """As in pyasn: the last line for a prefix wins, and bits past the length are ignored."""
        table = table_of("8.8.8.0/24\t1\n8.8.8.7/24\t15169\n")
        assert table.lookup(ipaddress.IPv4Address("8.8.8.200").packed) == 15169
        assert table.prefixes == 2

    def test_round_trip(self, tmp_path: Path) -> None:
        """A table written and read back is the same table, and gives the same answers."""
        table = table_of(NESTED, "nested test")
        path = write(tmp_path, gzip.compress(table.to_bytes()), "asn.table.gz")
        database = AsnDatabase.open(path)
        assert database.table == table
        assert (database.prefixes, database.source) == (8, "nested test")
        assert database.lookup("10.1.1.1") == 300 and database.lookup("2001:db8:0:1::11") == 64503

    def test_lookup_accepts_objects_and_any_text(self) -> None:
        """Address objects and every text ipaddress reads give the canonical text's answer."""
        database = AsnDatabase(table_of(NESTED), 8, "test")
        for address in ("10.1.1.1", ipaddress.IPv4Address("10.1.1.1")):
            assert database.lookup(address) == 300
        for address in ("2001:DB8:0:1::11", "2001:db8:0:1:0:0:0:11", "2001:db8:0:1::11%eth0",
                        ipaddress.IPv6Address("2001:db8:0:1::11")):
            assert database.lookup(address) == 64503

    @pytest.mark.parametrize("text", ["", "8.8.8", "not an address", "10.1.1.1\0", "2001:db8::/32"])
    def test_lookup_of_non_address(self, text: str) -> None:
        """A text that is not an address raises ValueError, as pyasn did."""
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            AsnDatabase(table_of(NESTED), 8, "test").lookup(text)


# A brute-force longest-prefix match over a few prefixes of a small corner of the space.
_PREFIX = st.tuples(st.integers(0, 2**12 - 1), st.integers(20, 32), st.integers(1, 5))


@settings(max_examples=200, deadline=None)
@given(
    prefixes=st.lists(_PREFIX, min_size=1, max_size=12), probes=st.lists(st.integers(0, 2**12), max_size=40)
)
def test_matches_longest_prefix(prefixes: list[tuple[int, int, int]], probes: list[int]) -> None:
    """Any set of nested, overlapping or repeated prefixes answers as a longest-prefix match."""
    base = 0x0A000000
    networks = [
        (base + (offset >> (32 - length) << (32 - length)), length, asn) for offset, length, asn in prefixes
    ]
    table = table_of("".join(f"{v4(start)}/{length}\t{asn}\n" for start, length, asn in networks))
    edges = {start + delta for start, length, _ in networks for delta in (-1, 0, 2 ** (32 - length))}
    for address in [*edges, *(base + probe for probe in probes)]:
        best: dict[int, int] = {}  # length -> AS, later lines winning
        for start, length, asn in networks:
            if start <= address < start + 2 ** (32 - length):
                best[length] = asn
        assert table.lookup(address.to_bytes(4, "big")) == (best[max(best)] if best else 0), v4(address)


def _header(n4: int, n6: int, prefixes: int = 1, source: bytes = b"") -> bytes:
    magic = asn_table.MAGIC
    return struct.pack(f"<{len(magic)}sIIQI", magic, n4, n6, prefixes, len(source)) + source


def _u32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def _u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


GOOD = _header(2, 2) + _u32(1, 5) + _u32(7, 0) + _u64(1, 1) + _u64(0, 9) + _u32(8, 0)
BROKEN_TABLES = {
    "version 2": (b"DOUANE-ASN\x00\x02" + GOOD[12:], "version 2 is not supported"),
    "header cut": (GOOD[:20], "truncated douane ASN table (20 bytes, header is 32)"),
    "arrays cut": (GOOD[:-1], "truncated douane ASN table"),
    "trailing bytes": (GOOD + b"\0", "trailing bytes after the douane ASN table"),
    "oversized counts": (_header(2**32 - 1, 2**32 - 1) + GOOD[32:], "truncated douane ASN table"),
    "long source": (_header(0, 0, source=b"x" * 2000), "source text of 2000 bytes"),
    "bad source": (_header(1, 0, source=b"\xff") + _u32(1) + _u32(7), "source text is not UTF-8"),
    "empty": (_header(0, 0), "holds no prefix"),
    "no prefix counted": (_header(1, 0, prefixes=0) + _u32(1) + _u32(7), "holds no prefix"),
    "v4 unsorted": (_header(2, 0) + _u32(5, 1) + _u32(7, 8), "IPv4 range starts are not strictly increasing"),
    "v4 repeated": (_header(2, 0) + _u32(5, 5) + _u32(7, 8), "IPv4 range starts are not strictly increasing"),
    "v6 high unsorted": (
        _header(0, 2) + _u64(2, 1) + _u64(0, 0) + _u32(1, 2), "IPv6 range starts are not strictly increasing"
    ),
    "v6 low unsorted": (
        _header(0, 2) + _u64(1, 1) + _u64(9, 3) + _u32(1, 2), "IPv6 range starts are not strictly increasing"
    ),
}


class TestTableFile:
    def test_good_table(self, tmp_path: Path) -> None:
        """The hand-made table above is valid: the broken ones below differ from it in one point."""
        database = AsnDatabase.open(write(tmp_path, GOOD))
        assert [database.lookup(v4(value)) for value in (0, 1, 4, 5)] == [None, 7, 7, None]
        addresses = ("::ffff:ffff:ffff:ffff", "0:0:0:1::", "0:0:0:1::8", "0:0:0:1::9", "0:0:0:2::")
        assert [database.lookup(address) for address in addresses] == [None, 8, 8, None, None]
        assert database.source == "douane ASN table"

    @pytest.mark.parametrize("case", sorted(BROKEN_TABLES))
    def test_broken_table(self, tmp_path: Path, case: str) -> None:
        """A corrupt table file is refused with a message saying what is wrong."""
        data, reason = BROKEN_TABLES[case]
        with pytest.raises(DatabaseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            AsnDatabase.open(write(tmp_path, data))

    def test_truncated_gzip(self, tmp_path: Path) -> None:
        """A gzip-compressed table cut short is refused as truncated."""
        data = gzip.compress(table_of(NESTED).to_bytes())
        with pytest.raises(DatabaseError, match="truncated"):
            AsnDatabase.open(write(tmp_path, data[: len(data) // 2], "asn.table.gz"))

    def test_big_endian_layout(self) -> None:
        """The arrays are stored little-endian whatever the machine (the file says so)."""
        data = table_of("1.2.3.0/24\t258\n").to_bytes()
        offset = struct.calcsize(f"<{len(asn_table.MAGIC)}sIIQI") + len(b"test")
        assert data[offset : offset + 8] == bytes([0, 3, 2, 1, 0, 4, 2, 1])
        assert data[offset + 8 : offset + 12] == bytes([2, 1, 0, 0])


class TestIpasnText:
    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("; header\n8.8.8.0/24\t15169\n8.8.8.0/24 15169\n", "line 3: expected network/length, a tab"),
            ("8.8.8.0/33\t15169\n", "line 1: prefix length 33 out of 1..32"),
            ("2001:db8::/129\t1\n", "line 1: prefix length 129 out of 1..128"),
            ("8.8.8.0/0\t15169\n", "line 1: prefix length 0"),
            ("8.8.8.0/24\t0\n", "line 1: AS 0 out of"),
            ("8.8.8.0/24\t4294967296\n", "line 1: AS 4294967296 out of"),
            ("8.8.8.0/24\t-5\n", "line 1: the prefix length and the AS must be decimal numbers"),
            ("8.8.8.0/24\t15169abc\n", "line 1: the prefix length and the AS must be decimal"),
            ("8.8.8/24\t15169\n", "line 1: not an IP address"),
            ("8.8.8.0/24\t1\n  \n", "line 2: expected network/length"),
        ],
    )
    def test_bad_line(self, tmp_path: Path, text: str, reason: str) -> None:
        """A line that is not a prefix and an AS is refused with its number and the reason."""
        with pytest.raises(DatabaseError, match="not a valid pyasn IPASN file") as caught:
            AsnDatabase.open(write(tmp_path, text.encode(), "bad.dat"))
        assert reason in str(caught.value)

    def test_comments_blank_lines_and_crlf(self, tmp_path: Path) -> None:
        """`;` and `#` comments, blank lines and CRLF line ends are accepted as pyasn does."""
        text = "; header\n# comment\n\n8.8.8.0/24\t15169\r\n1.1.1.0/24\t13335"
        database = AsnDatabase.open(write(tmp_path, text.encode(), "ok.dat"))
        answers = (database.lookup("8.8.8.8"), database.lookup("1.1.1.1"), database.prefixes)
        assert answers == (15169, 13335, 2)
        assert database.source == "pyasn IPASN file"


# -- pyasn as the oracle, on the embedded data ---------------------------------------------------


@pytest.fixture(scope="module")
def oracle() -> Iterator[tuple[pyasn.pyasn, AsnDatabase, str]]:
    """pyasn loaded with the IPASN text the embedded table came from, the table, and the text."""
    text = gzip.decompress(EMBEDDED_IPASN.read_bytes()).decode("ascii")
    yield pyasn.pyasn(None, ipasn_string=text), AsnDatabase.open(embedded.ASN_FILE), text


def _pyasn_answer(index: pyasn.pyasn, address: str) -> int | None:
    # What AsnDatabase.lookup answered when it was pyasn's radix tree.
    asn, _prefix = index.lookup(address)
    return asn if isinstance(asn, int) and 0 < asn <= 2**32 - 1 else None


class TestAgainstPyasn:
    def test_fixture_is_the_embedded_source(self) -> None:
        """The IPASN text kept for these tests is the one BUILD.json says the table came from."""
        manifest = json.loads(embedded.BUILD_FILE.read_text(encoding="utf-8"))
        (entry,) = [entry for entry in manifest["databases"] if entry["name"] == "asn"]
        text = gzip.decompress(EMBEDDED_IPASN.read_bytes())
        assert hashlib.sha256(text).hexdigest() == entry["compiled_from_ipasn_sha256"]

    def test_text_compiles_to_the_embedded_table(self, oracle: tuple[pyasn.pyasn, AsnDatabase, str]) -> None:
        """Compiling the text again gives the embedded table, array for array."""
        index, database, text = oracle
        assert table_of(text, database.source) == database.table
        assert database.prefixes == index._records == 732_482

    def test_range_edges(self, oracle: tuple[pyasn.pyasn, AsnDatabase, str]) -> None:
        """Around a sample of range starts (and every IPv6 start past /64), pyasn and the table agree."""
        index, database, _ = oracle
        table = database.table
        rng = random.Random(20260617)
        starts4 = rng.sample(list(table.v4_starts), 20_000)
        pairs6 = list(zip(table.v6_high, table.v6_low, strict=True))
        starts6 = [high << 64 | low for high, low in rng.sample(pairs6, 10_000) + [p for p in pairs6 if p[1]]]
        addresses = [v4(s + d) for s in starts4 for d in (-1, 0, 1) if 0 <= s + d < 2**32]
        addresses += [v6(s + d) for s in starts6 for d in (-1, 0, 1) if 0 <= s + d < 2**128]
        wrong = [a for a in addresses if database.lookup(a) != _pyasn_answer(index, a)]
        assert not wrong, wrong[:10]

    def test_random_addresses(self, oracle: tuple[pyasn.pyasn, AsnDatabase, str]) -> None:
        """Random IPv4 and IPv6 addresses (in ranges and in gaps) get pyasn's answer."""
        index, database, _ = oracle
        rng = random.Random(7)
        addresses = [v4(rng.getrandbits(32)) for _ in range(30_000)]
        # Uniform IPv6 addresses fall in gaps; the announced space is mostly under 2000::/3.
        addresses += [v6(rng.getrandbits(128)) for _ in range(5_000)]
        addresses += [v6(0x2 << 124 | rng.getrandbits(125)) for _ in range(25_000)]
        answers = [database.lookup(a) for a in addresses]
        assert answers == [_pyasn_answer(index, a) for a in addresses]
        assert answers.count(None) > 1_000 and len(set(answers)) > 1_000  # gaps and many ASes seen

    def test_inside_long_ipv6_prefixes(self, oracle: tuple[pyasn.pyasn, AsnDatabase, str]) -> None:
        """Inside, at and just outside every IPv6 prefix longer than /64, pyasn and the table agree."""
        index, database, text = oracle
        rng = random.Random(64)
        addresses = []
        for line in text.splitlines():
            if line.startswith(";"):
                continue
            network, _, length = line.partition("\t")[0].partition("/")
            if ":" in network and int(length) > 64:
                start = int(ipaddress.IPv6Address(network))
                size = 2 ** (128 - int(length))
                addresses += [v6(start + d) for d in (-1, 0, rng.randrange(size), size - 1, size)]
        assert len(addresses) > 5 * 1_000
        wrong = [a for a in addresses if database.lookup(a) != _pyasn_answer(index, a)]
        assert not wrong, wrong[:10]


# -- AS names ----------------------------------------------------------------------------------------


class TestAsNames:
    NAMES: ClassVar[dict[str, object]] = {
        "15169": "Google\x1b[31m LLC", "²": "x", "16276": 5, "AS1": "y", "13335": "C" * 300,
        "4294967296": "too big", "0": "zero", "24940": "Hetzner Online GmbH", "1": "",
    }

    def test_same_answers_as_eager_load(self, tmp_path: Path) -> None:
        """Checked one at a time, the names are those load_as_names gives for every AS asked."""
        path = tmp_path / "names.json"
        path.write_text(json.dumps(self.NAMES), encoding="utf-8")
        eager, lazy = load_as_names(path), AsNames.open(path)
        for asn in (15169, 16276, 13335, 24940, 1, 2, 0, 4294967295):
            assert lazy.get(asn) == eager.get(asn), asn
            assert lazy.get(asn) == eager.get(asn), asn  # from the cache
        assert eager[15169] == "Google[31m LLC" and len(eager[13335]) == 200

    def test_zero_padded_keys(self, tmp_path: Path) -> None:
        """Keys with leading zeros name the same AS as without; the last one wins, as eagerly."""
        path = tmp_path / "names.json"
        path.write_text(json.dumps({"15169": "first", "0015169": "second", "16276": "OVH"}), encoding="utf-8")
        lazy = AsNames.open(path)
        assert (lazy.get(15169), lazy.get(16276)) == (load_as_names(path)[15169], "OVH") == ("second", "OVH")

    @pytest.mark.parametrize("content", [{"x": "y"}, {"15169": 5, "AS1": "y"}])
    def test_no_valid_entry(self, tmp_path: Path, content: dict[str, object]) -> None:
        """A file where no entry maps an AS number to a name is refused at open, as before."""
        path = tmp_path / "names.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(DatabaseError, match="no entry maps an AS number to a name"):
            AsNames.open(path)

    def test_embedded_names(self) -> None:
        """The embedded names answer as load_as_names does, on every AS of the embedded table."""
        eager, lazy = load_as_names(embedded.AS_NAMES_FILE), AsNames.open(embedded.AS_NAMES_FILE)
        table = AsnDatabase.open(embedded.ASN_FILE).table
        asns = set(table.v4_asns) | set(table.v6_asns) | set(eager)
        assert all(lazy.get(asn) == eager.get(asn) for asn in asns)

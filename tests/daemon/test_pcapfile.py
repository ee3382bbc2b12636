"""The streaming pcap/pcapng reader: formats, byte orders, time resolutions, truncation, bad files.

pcapng files are built here block by block (pcapng specification, draft-ietf-opsawg-pcapng: section
4.1 SHB, 4.2 IDB and its if_tsresol option, 4.3 EPB, 4.4 SPB, appendix A the obsolete Packet Block),
so each test chooses every length field.
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.pcapfile import CHUNK, MAX_RECORD, CaptureFormatError, open_capture

FRAME_A = bytes(range(60))
FRAME_B = bytes(range(100, 142))
T = 1_764_324_000  # whole seconds


def pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    """A pcapng block: type, total length, body padded to 32 bits, total length again."""
    body = pad4(body)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def shb(order: str = "<") -> bytes:
    # Section Header Block: byte-order magic, version 1.0, section length -1 (unknown).
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def idb(linktype: int, tsresol: int | None = None, order: str = "<") -> bytes:
    # Interface Description Block: link type, reserved, snaplen, then options (if_tsresol is code 9).
    body = struct.pack(order + "HHI", linktype, 0, 65535)
    if tsresol is not None:
        body += struct.pack(order + "HH", 9, 1) + bytes([tsresol, 0, 0, 0])
        body += struct.pack(order + "HH", 0, 0)  # opt_endofopt
    return block(1, body, order)


def epb(ifid: int, units: int, data: bytes, wirelen: int | None = None, order: str = "<") -> bytes:
    # Enhanced Packet Block: interface, timestamp (high, low 32 bits), captured and original lengths.
    head = struct.pack(order + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return block(6, head + data, order)


def read(path: Path) -> list[tuple[float, int, bytes, int]]:
    return list(open_capture(path))


@pytest.fixture
def write(tmp_path: Path):
    def write_bytes(data: bytes, name: str = "capture") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write_bytes


class TestPcap:
    """Classic pcap files."""

    @pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
    def test_byte_orders(self, net, write, order):
        """Both byte orders give the same frames, times and lengths."""
        data = net.pcap_bytes([(T + 0.5, FRAME_A), (T + 1.25, FRAME_B, 1500)], 1, order)
        capture = open_capture(write(data))
        assert list(capture) == [(T + 0.5, 1, FRAME_A, 60), (T + 1.25, 1, FRAME_B, 1500)]
        assert capture.format == "pcap"
        assert not capture.truncated
        assert capture.bytes_read == capture.size == len(data)

    @pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
    def test_nanoseconds(self, net, write, order):
        """A nanosecond pcap's fraction is read in nanoseconds."""
        data = net.pcap_bytes([(T + 0.123456789, FRAME_A)], 101, order, nano=True)
        ((ts, linktype, _frame, _wirelen),) = read(write(data))
        assert ts == pytest.approx(T + 0.123456789, abs=1e-9)
        assert linktype == 101

    def test_fcs_bits_of_link_type(self, write):
        """The FCS bits above the link type's low 16 bits (pcap-linktype(7)) are ignored."""
        header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x14000001)
        record = struct.pack("<IIII", T, 0, len(FRAME_A), len(FRAME_A)) + FRAME_A
        assert read(write(header + record))[0][1] == 1

    def test_records_across_read_chunks(self, net, write):
        """Records that straddle the reader's chunk boundary are read whole."""
        frame = bytes(range(256)) * 6 + b"x" * 27  # 1563 bytes: not a divisor of the chunk size
        count = CHUNK // len(frame) * 2 + 3
        data = net.pcap_bytes([(T + i, frame) for i in range(count)], 1)
        frames = read(write(data))
        assert len(frames) == count
        assert all(f[2] == frame for f in frames)

    def test_record_larger_than_chunk(self, net, write):
        """A record larger than one read chunk is read whole."""
        big = b"y" * (CHUNK + 1000)
        frames = read(write(net.pcap_bytes([(T, FRAME_A), (T + 1, big), (T + 2, FRAME_B)], 1)))
        assert [len(f[2]) for f in frames] == [60, CHUNK + 1000, 42]

    @pytest.mark.parametrize("keep", [1, 15, 16, 17, 57], ids=lambda k: f"keep-{k}")
    def test_truncated_last_record(self, net, write, keep):
        """A file cut inside its last record yields the complete records and sets truncated."""
        data = net.pcap_bytes([(T, FRAME_A), (T + 1, FRAME_B)], 1)
        # The last record is 16 bytes of header and 42 of frame: keep only `keep` of its 58 bytes.
        capture = open_capture(write(data[: len(data) - 58 + keep]))
        assert [f[2] for f in capture] == [FRAME_A]
        assert capture.truncated

    def test_header_only(self, net, write):
        """A pcap with a header and no records is an empty, complete capture."""
        capture = open_capture(write(net.pcap_bytes([], 1)))
        assert list(capture) == []
        assert not capture.truncated

    def test_header_cut(self, write):
        """A pcap whose global header is cut short is not a capture."""
        with pytest.raises(CaptureFormatError, match="global header"):
            read(write(struct.pack("<IHH", 0xA1B2C3D4, 2, 4)))

    def test_record_claiming_too_much(self, net, write):
        """A record length above the reader's limit is a format error naming its offset."""
        data = net.pcap_bytes([(T, FRAME_A)], 1)
        data += struct.pack("<IIII", T, 0, MAX_RECORD + 1, 60)
        with pytest.raises(CaptureFormatError, match=f"offset {len(data) - 16}"):
            read(write(data))


class TestPcapng:
    """pcapng files."""

    @pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
    def test_sections_in_both_byte_orders(self, write, order):
        """A section's byte-order magic decides how every block in it is read."""
        data = shb(order) + idb(1, order=order) + epb(0, T * 1_000_000 + 250_000, FRAME_A, 80, order)
        capture = open_capture(write(data))
        assert list(capture) == [(T + 0.25, 1, FRAME_A, 80)]
        assert capture.format == "pcapng"

    def test_interfaces_with_their_link_types_and_resolutions(self, write):
        """Each interface has its own link type and if_tsresol (10^-9 and 2^-20 here; default 10^-6)."""
        data = (
            shb() + idb(1) + idb(101, tsresol=9) + idb(113, tsresol=0x80 | 20)
            + epb(0, T * 10**6 + 1, FRAME_A)
            + epb(1, T * 10**9 + 5, FRAME_B)
            + epb(2, T * 2**20 + 2**19, FRAME_A)
        )
        frames = read(write(data))
        assert [f[1] for f in frames] == [1, 101, 113]
        assert frames[0][0] == pytest.approx(T + 1e-6, abs=1e-7)
        assert frames[1][0] == pytest.approx(T + 5e-9, abs=1e-7)
        assert frames[2][0] == T + 0.5

    def test_simple_and_obsolete_packet_blocks(self, write):
        """Simple Packet Blocks (interface 0, no time) and obsolete Packet Blocks are read."""
        spb = block(3, struct.pack("<I", len(FRAME_B)) + FRAME_B)
        old = block(2, struct.pack("<HHIIII", 0, 0, 0, 7, len(FRAME_A), 70) + FRAME_A)
        frames = read(write(shb() + idb(1) + spb + old))
        assert frames == [(0.0, 1, FRAME_B, 42), (7e-6, 1, FRAME_A, 70)]

    def test_other_blocks_skipped(self, write):
        """Name resolution, statistics and custom blocks carry no packets and are skipped."""
        nrb = block(4, struct.pack("<HH", 0, 0))
        isb = block(5, struct.pack("<III", 0, 0, 0))
        custom = block(0x00000BAD, b"custom data")
        frames = read(write(shb() + idb(1) + nrb + epb(0, 0, FRAME_A) + isb + custom))
        assert [f[2] for f in frames] == [FRAME_A]

    def test_new_section_resets_interfaces(self, write):
        """A second section (here big-endian) starts its own interface list."""
        data = shb() + idb(1) + epb(0, 0, FRAME_A) + shb(">") + idb(101, order=">") + epb(
            0, 0, FRAME_B, order=">")
        assert [(f[1], f[2]) for f in read(write(data))] == [(1, FRAME_A), (101, FRAME_B)]

    def test_inconsistent_blocks_counted(self, write):
        """Packet blocks for an unknown interface or longer than their block are skipped and counted."""
        liar = block(6, struct.pack("<IIIII", 0, 0, 0, 4000, 4000) + FRAME_A)
        capture = open_capture(write(shb() + idb(1) + epb(3, 0, FRAME_A) + liar + epb(0, 0, FRAME_B)))
        assert [f[2] for f in capture] == [FRAME_B]
        assert capture.bad_records == 2

    def test_truncated_block(self, write):
        """A file cut inside a block yields the complete blocks and sets truncated."""
        data = shb() + idb(1) + epb(0, 0, FRAME_A) + epb(0, 0, FRAME_B)
        capture = open_capture(write(data[:-20]))
        assert [f[2] for f in capture] == [FRAME_A]
        assert capture.truncated

    @pytest.mark.parametrize(
        ("tail", "message"),
        [
            pytest.param(struct.pack("<II", 6, 30) + b"\x00" * 22, "length 30", id="not-multiple-of-4"),
            pytest.param(struct.pack("<II", 6, MAX_RECORD + 4), "has length", id="huge"),
            pytest.param(struct.pack("<II", 6, 8), "has length 8", id="below-minimum"),
            pytest.param(block(1, b"\x01\x00"), "interface block", id="idb-cut"),
        ],
    )
    def test_bad_lengths(self, write, tail, message):
        """Impossible block lengths are a format error with the file and a clear reason."""
        path = write(shb() + idb(1) + tail)
        with pytest.raises(CaptureFormatError, match=message) as info:
            read(path)
        assert str(path) in str(info.value)

    def test_bad_byte_order_magic(self, write):
        """A section header whose byte-order magic is neither order is a format error."""
        bad = struct.pack("<II", 0x0A0D0D0A, 28) + b"\x00\x11\x22\x33" + b"\x00" * 16
        with pytest.raises(CaptureFormatError, match="byte-order"):
            read(write(bad))


class TestNotCaptures:
    """Files that are not captures at all."""

    def test_empty(self, write):
        """An empty file is a format error that says so."""
        with pytest.raises(CaptureFormatError, match="empty file"):
            read(write(b""))

    def test_text(self, write):
        """Any other content is a format error showing the first bytes."""
        with pytest.raises(CaptureFormatError, match="0x48454c4c"):
            read(write(b"HELLO, world"))

    def test_lazy(self, tmp_path):
        """open_capture does no I/O: a missing file fails only when iterated."""
        capture = open_capture(tmp_path / "absent")
        with pytest.raises(FileNotFoundError):
            list(capture)


# --- fuzzing -------------------------------------------------------------------------------------


def small_pcap() -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    records = b"".join(struct.pack("<IIII", T + i, i, len(f), len(f)) + f
                       for i, f in enumerate((FRAME_A, FRAME_B, FRAME_A)))
    return header + records


def small_pcap_be_nano() -> bytes:
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)
    return header + struct.pack(">IIII", T, 999_999_999, len(FRAME_B), 1500) + FRAME_B


def small_pcapng() -> bytes:
    spb = block(3, struct.pack("<I", len(FRAME_B)) + FRAME_B)
    return (shb() + idb(1) + idb(101, tsresol=9) + epb(0, 5, FRAME_A) + epb(1, 7, FRAME_B) + spb
            + shb(">") + idb(113, order=">") + epb(0, 1, FRAME_A, order=">"))


VALID = [small_pcap(), small_pcap_be_nano(), small_pcapng()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A small valid capture with bytes flipped, a slice cut out or duplicated, and a random end."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data)))
        stop = draw(st.integers(start, min(len(data), start + 64)))
        data[start:stop] = data[start:stop] * draw(st.integers(0, 2))
    data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    return bytes(data) + draw(st.binary(max_size=32))


class Hang(Exception):
    """Raised by the alarm when reading a small file takes seconds: the reader is looping."""


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One file rewritten by each Hypothesis example, with an alarm that turns a hang into a failure."""

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    yield tmp_path_factory.mktemp("fuzz") / "capture"
    signal.signal(signal.SIGALRM, previous)


class TestReaderFuzz:
    """Random mutations of valid captures: clean iteration or CaptureFormatError, nothing else."""

    @given(mutated())
    @example(small_pcapng()[:28] + struct.pack("<II", 1, 12) + struct.pack("<I", 12))  # IDB, no body
    @example(small_pcap()[:24] + struct.pack("<IIII", 0, 0, 0, 0) * 3)  # empty records
    def test_only_format_errors(self, fuzz_path, data):
        """Reading a mutated file ends, yields well-formed frames, or raises CaptureFormatError."""
        fuzz_path.write_bytes(data)
        capture = open_capture(fuzz_path)
        frames = 0
        signal.alarm(5)
        try:
            for ts, linktype, frame, wirelen in capture:
                frames += 1
                assert isinstance(ts, float)
                assert 0 <= linktype <= 0xFFFF
                assert isinstance(frame, bytes)
                assert len(frame) <= MAX_RECORD
                assert wirelen >= 0
        except CaptureFormatError as exc:
            assert str(fuzz_path) in str(exc)
        finally:
            signal.alarm(0)
        # Every yielded frame used at least 12 bytes of the file (an SPB header and trailer).
        assert frames <= len(data) // 12
        assert capture.bytes_read <= len(data)

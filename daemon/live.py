"""Live capture on the gateway's interfaces: AF_PACKET sockets, a BPF filter in the kernel, reads in
batches, kernel drop counts.

By default each socket has a memory-mapped TPACKET_V3 receive ring (packet(7)): the kernel fills
blocks of frames and douane takes a whole block at once, with no system call per packet. Each block
becomes the same (buffer, records) batch a pcap file gives, so dissection, flows and everything after
them are the replay's code. `ring: false` falls back to one `recv_into` per frame. PACKET_FANOUT
shares the interfaces between worker processes (workers.py).
"""

from __future__ import annotations

import mmap
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from threading import Event

from douane.daemon.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from douane.daemon.pcapfile import Batch, Record

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_FANOUT = 18
# Flow hash (the kernel's is the same for both directions of a flow), defragmenting first so that
# every fragment of a datagram reaches the worker of its flow.
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
TPACKET_V3 = 2
TPACKET_STATS = struct.Struct("II")  # tp_packets, tp_drops (linux/if_packet.h)
# V3's statistics add tp_freeze_q_cnt (blocks the kernel found full).
TPACKET_STATS_V3 = struct.Struct("III")
# block size, block nr, frame size, frame nr, retire timeout, sizeof priv, feature word
TPACKET_REQ3 = struct.Struct("IIIIIII")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt (linux/if_packet.h).
BLOCK_HEADER = struct.Struct("IIIII")
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net, then hv1: rxhash,
# vlan_tci, vlan_tpid.
FRAME_HEADER = struct.Struct("IIIIIIHHIIH")
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
# ARPHRD_* (linux/if_arp.h) -> the link type of the frames the socket hands out.
ARPHRD_LINKTYPES = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}


class CaptureError(OSError):
    """An interface cannot be captured on (missing, no permission, bad filter)."""


@dataclass(frozen=True)
class LiveConfig:
    """Live capture settings (YAML section `capture`)."""

    interfaces: tuple[str, ...]
    bpf: str = ""
    snaplen: int = 65_535  # whole frames: inspection reads payloads
    batch_bytes: int = 4 << 20  # one buffer per batch; a batch ends before it could overflow
    poll_seconds: float = 0.5  # idle wake-ups, for timeouts, drop counts and the watchdog
    promiscuous: bool = True  # a mirror (SPAN) port delivers frames addressed to others
    rcvbuf: int = 32 << 20  # socket receive buffer (plain sockets): absorbs bursts
    ring: bool = True  # TPACKET_V3 memory-mapped ring instead of one recv per frame
    ring_block_size: int = 1 << 20  # bytes per ring block (a power of two, multiple of the page)
    ring_blocks: int = 64  # ring of 64 MiB: about a second of a saturated 500 Mbit/s link
    ring_block_timeout_ms: int = 100  # a partly filled block is handed over after this long
    fanout_group: int | None = None  # join this PACKET_FANOUT group (one per interface + group id)


class LiveCapture:
    """AF_PACKET sockets on the configured interfaces; no I/O until start()."""

    def __init__(self, config: LiveConfig) -> None:
        self.config = config
        self.packets = 0
        self.kernel_drops = 0
        self._sockets: list[tuple[socket.socket, int]] = []
        self._rings: dict[int, tuple[mmap.mmap, int]] = {}  # fd -> (ring, next block)

    def start(self) -> None:
        """Opens, binds and filters one socket per interface; raises CaptureError."""
        for name in self.config.interfaces:
            try:
                self._sockets.append((self._open(name), _linktype(name)))
            except OSError as exc:
                self.stop()
                raise CaptureError(f"interface {name}: {exc.strerror or exc}") from None

    def _open(self, name: str) -> socket.socket:
        index = socket.if_nametoindex(name)  # OSError "No such device" before anything else
        # Protocol 0: the socket receives nothing until bind() names the protocol, so no frame can
        # slip in before the filter is attached (what libpcap guards against too).
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
            if self.config.bpf:
                _attach_filter(sock, self.config.bpf, name)
            sock.bind((name, ETH_P_ALL))  # CPython converts the protocol to network order
            if self.config.promiscuous:
                mreq = struct.pack("IHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            if self.config.ring:
                self._rings[sock.fileno()] = self._map_ring(sock)
            if self.config.fanout_group is not None:
                # Each interface gets its own group id, shared by the workers capturing on it.
                group = (self.config.fanout_group + index) & 0xFFFF
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", group | (mode << 16)))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _map_ring(self, sock: socket.socket) -> tuple[mmap.mmap, int]:
        config = self.config
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048  # frames are packed in a V3 block; this only sizes tp_frame_nr
        req = TPACKET_REQ3.pack(
            config.ring_block_size, config.ring_blocks, frame_size,
            config.ring_block_size * config.ring_blocks // frame_size,
            config.ring_block_timeout_ms, 0, 0,
        )
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        ring = mmap.mmap(sock.fileno(), config.ring_block_size * config.ring_blocks,
                         mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return ring, 0

    def stop(self) -> None:
        for ring, _ in self._rings.values():
            ring.close()
        self._rings = {}
        for sock, _ in self._sockets:
            sock.close()
        self._sockets = []

    def drops(self) -> int:
        """Frames the kernel dropped since start (its receive buffer was full): read and added up,
        because reading PACKET_STATISTICS resets the kernel's counters."""
        for sock, _ in self._sockets:
            ringed = sock.fileno() in self._rings
            layout = TPACKET_STATS_V3 if ringed else TPACKET_STATS
            raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, layout.size)
            self.kernel_drops += layout.unpack(raw)[1]
        return self.kernel_drops

    def batches(self, stop: Event, on_idle: Callable[[float], None],
                readers: Mapping[int, Callable[[float], object]] | None = None) -> Iterator[Batch]:
        """Batches of frames until `stop` is set; `on_idle(now)` runs at least every poll period.

        `readers` maps other file descriptors (the flow collector's UDP socket) to a call made with
        `now` when they are readable, on this thread, after the frames of the same wake-up: the
        pipeline and its caches are not shared across threads, and a DNS answer captured before a
        flow record is then known when the record is named.
        """
        config = self.config
        poller = select.poll()
        by_fd = {}
        for sock, linktype in self._sockets:
            poller.register(sock.fileno(), select.POLLIN)
            by_fd[sock.fileno()] = (sock, linktype)
        others = dict(readers or {})
        for fd in others:
            poller.register(fd, select.POLLIN)
        snaplen = config.snaplen
        size = config.batch_bytes
        last_idle = time.time()
        while not stop.is_set():
            ready = poller.poll(config.poll_seconds * 1000)
            now = time.time()
            if not ready or now - last_idle >= config.poll_seconds:
                on_idle(now)
                last_idle = now
            ready.sort(key=lambda item: item[0] in others)  # capture first
            for fd, _events in ready:
                reader = others.get(fd)
                if reader is not None:
                    reader(now)
                    continue
                sock, linktype = by_fd[fd]
                if fd in self._rings:
                    yield from self._blocks(fd, linktype)
                    continue
                buf = bytearray(size)
                view = memoryview(buf)
                records: list[Record] = []
                off = 0
                while off + snaplen <= size:
                    try:
                        # MSG_TRUNC makes the kernel return the frame's real length.
                        wirelen = sock.recv_into(view[off:], snaplen, socket.MSG_TRUNC)
                    except BlockingIOError:
                        break
                    caplen = wirelen if wirelen < snaplen else snaplen
                    records.append((now, linktype, off, off + caplen, wirelen))
                    off += caplen
                view.release()
                if records:
                    self.packets += len(records)
                    # bytes: dissection keys flows by slices of the buffer, which must be hashable.
                    yield bytes(buf[:off]), records


    def _blocks(self, fd: int, linktype: int) -> Iterator[Batch]:
        """Every block the kernel has handed to user space, in ring order, each returned after."""
        ring, index = self._rings[fd]
        block_size = self.config.ring_block_size
        blocks = self.config.ring_blocks
        unpack_frame = FRAME_HEADER.unpack_from
        while True:
            base = index * block_size
            _version, _priv, status, count, first = BLOCK_HEADER.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                break
            # One copy of the block: the batch outlives the block, which goes back to the kernel.
            buf = bytearray(ring[base : base + block_size])
            ring[base + 8 : base + 12] = struct.pack("I", TP_STATUS_KERNEL)
            index = (index + 1) % blocks
            records: list[Record] = []
            off = first
            for _ in range(count):
                (nxt, sec, nsec, caplen, wirelen, fstatus, mac, _net, _hash, tci, tpid) = unpack_frame(
                    buf, off
                )
                start = off + mac
                end = start + caplen
                if fstatus & TP_STATUS_VLAN_VALID and linktype == LINKTYPE_ETHERNET and caplen >= 12:
                    # The NIC or the kernel took the 802.1Q tag off the frame; put it back so the
                    # dissector keys the flow by its VLAN, as in a capture file.
                    proto = tpid if fstatus & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
                    tagged = buf[start : start + 12] + struct.pack("!HH", proto, tci) + buf[start + 12 : end]
                    start = len(buf)
                    buf += tagged
                    end = len(buf)
                    wirelen += 4
                records.append((sec + nsec * 1e-9, linktype, start, end, wirelen))
                off += nxt
                if not nxt:
                    break
            self._rings[fd] = (ring, index)
            if records:
                self.packets += len(records)
                yield bytes(buf), records


def _linktype(name: str) -> int:
    try:
        arphrd = int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError):
        return LINKTYPE_ETHERNET
    return ARPHRD_LINKTYPES.get(arphrd, LINKTYPE_ETHERNET)


def _attach_filter(sock: socket.socket, expression: str, name: str) -> None:
    """Compiles the BPF expression with libpcap (through scapy) and attaches it to the socket."""
    try:
        from scapy.arch.linux import attach_filter  # noqa: PLC0415 — loads libpcap, only when asked
        from scapy.error import Scapy_Exception  # noqa: PLC0415
    except ImportError as exc:
        raise CaptureError(f"cannot compile the BPF filter: {exc}") from None
    try:
        attach_filter(sock, expression, name)
    except (Scapy_Exception, ImportError, OSError, ValueError) as exc:
        raise CaptureError(f"BPF filter {expression!r}: {exc}") from None

"""Live capture on the gateway's interfaces: AF_PACKET sockets, a BPF filter in the kernel, reads in
batches, kernel drop counts.

Frames are read with `recv_into` into one buffer per batch, which becomes the same (buffer, records)
batch a pcap file gives, so dissection, flows and everything after them are the replay's code. This
is the plain-socket path; a memory-mapped TPACKET_V3 ring and PACKET_FANOUT workers are the next step
(issue 6).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
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
TPACKET_STATS = struct.Struct("II")  # tp_packets, tp_drops (linux/if_packet.h)
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
    rcvbuf: int = 32 << 20  # socket receive buffer: absorbs bursts while Python is busy


class LiveCapture:
    """AF_PACKET sockets on the configured interfaces; no I/O until start()."""

    def __init__(self, config: LiveConfig) -> None:
        self.config = config
        self.packets = 0
        self.kernel_drops = 0
        self._sockets: list[tuple[socket.socket, int]] = []

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
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
            if self.config.bpf:
                _attach_filter(sock, self.config.bpf, name)
            sock.bind((name, 0))
            if self.config.promiscuous:
                mreq = struct.pack("IHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        for sock, _ in self._sockets:
            sock.close()
        self._sockets = []

    def drops(self) -> int:
        """Frames the kernel dropped since start (its receive buffer was full): read and added up,
        because reading PACKET_STATISTICS resets the kernel's counters."""
        for sock, _ in self._sockets:
            raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
            _seen, dropped = TPACKET_STATS.unpack(raw)
            self.kernel_drops += dropped
        return self.kernel_drops

    def batches(self, stop: Event, on_idle: Callable[[float], None]) -> Iterator[Batch]:
        """Batches of frames until `stop` is set; `on_idle(now)` runs at least every poll period."""
        config = self.config
        poller = select.poll()
        by_fd = {}
        for sock, linktype in self._sockets:
            poller.register(sock.fileno(), select.POLLIN)
            by_fd[sock.fileno()] = (sock, linktype)
        snaplen = config.snaplen
        size = config.batch_bytes
        last_idle = time.time()
        while not stop.is_set():
            ready = poller.poll(config.poll_seconds * 1000)
            now = time.time()
            if not ready or now - last_idle >= config.poll_seconds:
                on_idle(now)
                last_idle = now
            for fd, _events in ready:
                sock, linktype = by_fd[fd]
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

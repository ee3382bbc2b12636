"""systemd's notification protocol (sd_notify(3)): READY, WATCHDOG, RELOADING, STOPPING, STATUS.

A datagram to the socket named by $NOTIFY_SOCKET; a no-op when douane does not run under systemd.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog period, as sd_watchdog_enabled(3) advises.
        self.watchdog_seconds = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_beat = 0.0

    def beat(self) -> None:
        """WATCHDOG=1 when half the watchdog period has passed since the last one. The monotonic
        clock: an NTP step back must not silence the watchdog (systemd would kill the daemon)."""
        now = time.monotonic()
        if self.watchdog_seconds and now - self._last_beat >= self.watchdog_seconds:
            self.send("WATCHDOG=1")
            self._last_beat = now

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        # "@name" is an abstract socket: its name starts with a NUL byte.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto("\n".join(fields).encode(), target)
            except OSError:
                return False
        return True

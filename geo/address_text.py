"""Address texts as douane writes them (`inet_ntop`), recognised without `ipaddress` objects.

Parsing a text into an `ipaddress` object costs 5 to 15 µs; the records douane makes already hold
canonical texts, so the geo look-up, the evidence store and the pseudonyms check that first.
"""

from __future__ import annotations

import socket


def ntop_packed(text: object) -> bytes | None:
    """The packed address (4 or 16 bytes) when `text` is exactly what `inet_ntop` writes for it.

    None for anything else: not a string, not an address, a scope id, leading zeros, upper case,
    an uncompressed IPv6 text, a NUL or a surrogate in the text.
    """
    if type(text) is not str:
        return None
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):
        return None
    return packed if socket.inet_ntop(family, packed) == text else None

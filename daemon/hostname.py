"""Hostnames fit for logs, metric labels and policy.

Every name douane reads from the wire (TLS SNI, HTTP Host, QUIC SNI, DNS) passes through
`clean_hostname` before anything else sees it: a name that is not a plain DNS name in the
letters-digits-hyphen (LDH) syntax comes out as None, so control bytes, spaces, quotes, non-ASCII
text or an address literal never reach a log line, a label or a rule.
"""

from __future__ import annotations

import re
from functools import lru_cache

# RFC 1035 2.3.4: labels of 1 to 63 octets, a name of at most 255 octets on the wire, that is at
# most 253 characters in text form without the trailing dot. RFC 952/1123 letters, digits and
# hyphens, plus the underscore that service names (RFC 2782 "_sip._tcp") and many real hosts use.
# IDNA A-labels ("xn--...", RFC 5890) are LDH already and pass unchanged; U-labels (raw UTF-8)
# do not. `fullmatch` so that a trailing newline cannot slip through as `$` would let it.
_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}", re.ASCII)
MAX_NAME = 253

# Where a flow's name came from (the record's `hostname_source`), in increasing precedence: a name
# from a better source replaces one from a weaker source, never the reverse. Used by inspection
# (identify.py) and by the flow collector for names that exporters send (netflow.py). "dns_query"
# names a flow *to a resolver* by the question it carried: a fact about the query, not about where
# the flow goes (DESIGN.md's list of sources gains it; the jurisdiction and service stages ignore it).
SOURCE_RANK = {None: 0, "dns_query": 0, "dns": 1, "http_host": 2, "tls_sni": 3, "quic_sni": 3}


def clean_hostname(raw: bytes | str) -> str | None:
    """A DNS name fit for logs, labels and policy, or None.

    The same names come back again and again (every query for a popular domain): answers are
    remembered for the last few thousand distinct inputs.

    The name is lower-cased and one trailing dot removed. It must then be ASCII, at most 253
    characters, made of dot-separated labels of 1 to 63 letters, digits, hyphens or underscores.
    An address literal (last label all digits: "10.0.0.1", "1.2.3.4.", also any bracketed IPv6,
    which fails the character set) is not a hostname.

    Never raises: anything that is not such a name, including a non-str/bytes argument, gives None.
    """
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if isinstance(raw, bytes | str):
        # Longer than any name: refused before the cache, so the cache holds short keys only.
        return _clean(raw) if len(raw) <= MAX_NAME + 1 else None
    return None


@lru_cache(maxsize=8192)
def _clean(raw: bytes | str) -> str | None:
    if isinstance(raw, bytes):
        if not raw.isascii():
            return None
        name = raw.decode("ascii")
    else:
        if not raw.isascii():
            return None
        name = raw
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        return None
    name = name.lower()
    if _NAME.fullmatch(name) is None:
        return None
    # RFC 1123 2.1 / RFC 3696 2: a top-level label is never all-numeric, which is how an IPv4
    # literal (and its shorthand forms such as "127.1") is told from a name.
    if name.rpartition(".")[2].isdigit():
        return None
    return name

"""HTTP/1.x: the host a client's first request names, on any port.

`http_host` follows the contract of STYLE.md: it returns a result, returns None when the request's
header section is not complete yet, or raises `MalformedPacket` (reason "malformed"). Nothing else
escapes.
"""

from __future__ import annotations

import re

from douane.daemon.hostname import clean_hostname
from douane.daemon.wire import malformed

# The most header bytes douane buffers for one request (request line included). RFC 9112 does not
# fix one (section 2.3 leaves it to the server, which answers 431); 16 KiB is above what browsers
# and common servers accept for the whole header section (nginx 8 KiB per line, Apache 8 KiB).
MAX_HEADERS = 16 * 1024

# Request methods douane recognises at a stream's start: RFC 9110 9.3, PATCH (RFC 5789), WebDAV
# (RFC 4918, RFC 3253, RFC 3648, RFC 3744, RFC 4791, RFC 5323). A fixed list rather than any token:
# "EHLO x" (SMTP), "USER x" (FTP) and many other client commands are a token and a space too.
METHODS = frozenset({
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    b"REPORT", b"CHECKOUT", b"CHECKIN", b"UNCHECKOUT", b"MKWORKSPACE", b"UPDATE", b"LABEL",
    b"MERGE", b"BASELINE-CONTROL", b"MKACTIVITY", b"VERSION-CONTROL", b"ORDERPATCH", b"ACL",
    b"MKCALENDAR", b"SEARCH", b"BIND", b"UNBIND", b"REBIND",
})
_PREFIXES = frozenset(m[:i] for m in METHODS for i in range(1, len(m) + 1))
_LONGEST = max(len(m) for m in METHODS)

# RFC 9112 3: request-line = method SP request-target SP HTTP-version; HTTP-version = "HTTP/" DIGIT
# "." DIGIT, here 1.x only (HTTP/2 and /3 do not start with a request line).
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z-]*) (\S+) HTTP/1\.[0-9]")
# RFC 9112 5 / RFC 9110 5.1: field-name is a token.
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 3986 3.2: authority = [ userinfo "@" ] host [ ":" port ], for absolute and authority forms.
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")


def looks_like_http(first: bytes) -> bool:
    """Whether a stream's first bytes can start an HTTP/1.x request: a known method, then a space.

    True on a prefix that agrees so far ("GE", "POST"); the parser decides.
    """
    space = first.find(b" ", 0, _LONGEST + 1)
    if space < 0:
        return len(first) <= _LONGEST and first in _PREFIXES
    return first[:space] in METHODS


def _host_of(authority: bytes) -> str:
    """The cleaned host of an authority ("host", "host:port", "user@host:port"), or ""."""
    authority = authority.rpartition(b"@")[2]
    if authority.startswith(b"["):
        return ""  # an IPv6 literal (RFC 3986 3.2.2): an address, not a name
    host, colon, port = authority.rpartition(b":")
    if not colon:
        host = authority
    elif port and not port.isdigit():
        return ""
    return clean_hostname(host) or ""


def http_host(stream: bytes) -> str | None:
    """The host named by the first request of a client's stream.

    The Host header (RFC 9112 3.2), port removed, cleaned by `clean_hostname`. A request in
    absolute form ("GET http://host/ HTTP/1.1", to a proxy) or authority form ("CONNECT host:443")
    names its host in the request target, which RFC 9112 3.2.2 says wins over Host.

    Returns:
        The cleaned host name; "" when the header section is complete but names no usable host
        (no Host header, an empty one, an address literal, an invalid name); None when the header
        section is not complete yet.

    Raises:
        MalformedPacket: not an HTTP/1.x request line, a header line that is not a field, two
            Host headers, or no end of the header section within `MAX_HEADERS` bytes.
    """
    end = stream.find(b"\n\n", 0, MAX_HEADERS)
    crlf = stream.find(b"\r\n\r\n", 0, MAX_HEADERS)
    if crlf >= 0 and (end < 0 or crlf < end):
        end = crlf
    if end < 0:
        if stream and not looks_like_http(stream[: _LONGEST + 1]):
            raise malformed("http request line")
        if len(stream) >= MAX_HEADERS:
            raise malformed("http headers too long")
        return None
    # RFC 9112 2.2: a recipient may take a bare LF as a line terminator and ignore a preceding CR.
    lines = stream[:end].split(b"\n")
    request = _REQUEST_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if request is None or request.group(1) not in METHODS:
        raise malformed("http request line")
    method, target = request.group(1), request.group(2)
    host: bytes | None = None
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            continue  # obs-fold continuation (RFC 9112 5.2): part of the previous field's value
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            raise malformed("http header line")
        if name.lower() == b"host":
            # RFC 9112 3.2: a server MUST answer 400 to a request with more than one Host.
            if host is not None:
                raise malformed("http duplicate host")
            host = value.strip(b" \t")
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        return _host_of(absolute.group(1))
    if method == b"CONNECT":
        return _host_of(target)
    if host is None:
        return ""
    return _host_of(host)

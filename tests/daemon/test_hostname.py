"""clean_hostname: only plain DNS names come out; everything else is None, and nothing raises."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.hostname import clean_hostname

# What may come out, checked independently of the implementation's own pattern.
SAFE = re.compile(r"[a-z0-9_.-]{1,253}")


def assert_safe(name: str | None) -> None:
    if name is None:
        return
    assert SAFE.fullmatch(name), name
    assert all(1 <= len(label) <= 63 for label in name.split("."))
    assert not name.rpartition(".")[2].isdigit()


class TestCleanHostname:
    @pytest.mark.parametrize(("raw", "want"), [
        ("example.com", "example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("example.com.", "example.com"),
        (b"static.dingtalk.com", "static.dingtalk.com"),
        ("www.love.xn--55qx5d", "www.love.xn--55qx5d"),
        ("_sip._tcp.example.org", "_sip._tcp.example.org"),
        ("r3---sn-4g5e6nsz.googlevideo.com", "r3---sn-4g5e6nsz.googlevideo.com"),
        ("localhost", "localhost"),
        ("41-courier.push.apple.com", "41-courier.push.apple.com"),
        ("1.downloader.disk.yandex.kz", "1.downloader.disk.yandex.kz"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ])
    def test_valid(self, raw: str | bytes, want: str) -> None:
        """A DNS name comes out lower-cased, without its trailing dot, A-labels kept as they are."""
        assert clean_hostname(raw) == want

    @pytest.mark.parametrize("raw", [
        "", ".", "..", "a..b", ".example.com", "example.com..",
        "exa mple.com", "example.com\n", "example.com\x00", "ex\x1bample.com", "exam\tple.com",
        "exämple.com", "例子.测试", b"ex\xc3\xa4mple.com", b"\xff\xfe",
        "*.example.com", "example.com/path", "user@example.com", "example.com:443", "a\"b.com",
        "<script>.com", "a;b.com", "%41.com", "a\\b.com",
        "a" * 64 + ".com",
    ])
    def test_invalid(self, raw: str | bytes) -> None:
        """Control bytes, spaces, punctuation, non-ASCII, empty or oversized labels give None."""
        assert clean_hostname(raw) is None

    @pytest.mark.parametrize("raw", [
        "10.0.0.1", "198.51.100.7.", "127.1", "0", "4294967295", "[::1]", "::1", "2001:db8::7",
        "[2001:db8::7]:443",
    ])
    def test_address_literals(self, raw: str) -> None:
        """An IPv4 or IPv6 literal is an address, not a hostname."""
        assert clean_hostname(raw) is None

    def test_length_limit(self) -> None:
        """253 characters is the longest name (RFC 1035 2.3.4, without the trailing dot)."""
        longest = ".".join(["a" * 63] * 3 + ["b" * 61])  # 63*3 + 61 + 3 dots = 253
        assert len(longest) == 253
        assert clean_hostname(longest) == longest
        assert clean_hostname(longest + ".") == longest
        assert clean_hostname(longest + "c") is None

    @pytest.mark.parametrize("raw", [None, 3, 1.5, ["a.com"], object()])
    def test_other_types(self, raw: object) -> None:
        """Anything that is not text or bytes gives None rather than an exception."""
        assert clean_hostname(raw) is None  # type: ignore[arg-type]

    @given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
    @example("a.b\n")
    @example(b"A.\x80")
    @example("ǅ.com")  # a title-case letter whose lower() is ASCII-looking in some engines
    @example("K.com")  # KELVIN SIGN lower-cases to ASCII "k"
    def test_fuzz_only_safe_names(self, raw: str | bytes) -> None:
        """Whatever goes in, what comes out is None or a name made of safe characters only."""
        out = clean_hostname(raw)
        assert_safe(out)
        if out is not None:
            assert clean_hostname(out) == out

    @given(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,63}", fullmatch=True), min_size=1, max_size=6))
    def test_fuzz_valid_names_survive(self, labels: list[str]) -> None:
        """A name built from valid labels comes out lower-cased, unless it is too long or numeric."""
        name = ".".join(labels)
        out = clean_hostname(name)
        if len(name) <= 253 and not labels[-1].isdigit():
            assert out == name.lower()
        else:
            assert out is None

"""Pseudonyms of internal addresses: keyed, stable per installation, secret file created once and 0600."""

from __future__ import annotations

import ipaddress
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.pseudonym import (
    SECRET_BYTES,
    SECRET_FILE,
    PseudonymError,
    Pseudonymiser,
    _create_secret,
    already_canonical,
    canonical_address,
)

PSEUDONYM = re.compile(r"h:[0-9a-f]{16}")


class TestPseudonymiser:
    def test_form(self) -> None:
        """A pseudonym is `h:` and 16 lower-case hex digits, and differs from the address."""
        p = Pseudonymiser(b"k" * 32)
        assert PSEUDONYM.fullmatch(p.address("10.20.0.15"))
        assert "10.20.0.15" not in p.address("10.20.0.15")

    def test_keyed(self) -> None:
        """Two secrets give two unrelated pseudonyms for one address; one secret, one pseudonym."""
        a, b = Pseudonymiser(b"a" * 32), Pseudonymiser(b"b" * 32)
        assert a.address("10.0.0.1") != b.address("10.0.0.1")
        assert a.address("10.0.0.1") == Pseudonymiser(b"a" * 32).address("10.0.0.1")
        assert a.address("10.0.0.1") != a.address("10.0.0.2")

    def test_canonical_forms_agree(self) -> None:
        """Spellings of one IPv6 address share a pseudonym."""
        p = Pseudonymiser(b"k" * 32)
        assert p.address("fd00::1") == p.address("fd00:0:0::0001") == p.address("FD00::1")

    def test_disabled_gives_clear_canonical_address(self) -> None:
        """With pseudonyms off the address is shown, in canonical form."""
        p = Pseudonymiser(b"k" * 32, enabled=False)
        assert p.address("10.20.0.15") == "10.20.0.15"
        assert p.address("FD00:0::1") == "fd00::1"

    def test_not_an_address(self) -> None:
        """Anything that is not an address is refused, never hashed or echoed."""
        for p in (Pseudonymiser(b"k" * 32), Pseudonymiser(b"k" * 32, enabled=False)):
            with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
                p.address("184057512345644")

    def test_short_secret(self) -> None:
        """A secret shorter than 16 bytes is refused."""
        with pytest.raises(ValueError, match="16 bytes"):
            Pseudonymiser(b"short")

    def test_repr_hides_secret(self) -> None:
        """The secret never shows in a repr (tracebacks, debug logs)."""
        assert "kkkk" not in repr(Pseudonymiser(b"k" * 32))


class TestFromStateDir:
    def test_created_once_0600(self, tmp_path: Path) -> None:
        """The secret file is created with mode 0600, 32 bytes, in a created state directory."""
        state = tmp_path / "state" / "douane"
        Pseudonymiser.from_state_dir(state)
        secret = state / SECRET_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_bytes()) == SECRET_BYTES
        assert [p.name for p in state.iterdir()] == [SECRET_FILE]  # no temporary file left

    def test_stable_across_restarts(self, tmp_path: Path) -> None:
        """A second start reuses the file: same secret bytes, same pseudonyms."""
        first = Pseudonymiser.from_state_dir(tmp_path).address("10.20.0.15")
        content = (tmp_path / SECRET_FILE).read_bytes()
        second = Pseudonymiser.from_state_dir(tmp_path).address("10.20.0.15")
        assert first == second
        assert (tmp_path / SECRET_FILE).read_bytes() == content

    def test_differs_between_installations(self, tmp_path: Path) -> None:
        """Two state directories make two secrets, so pseudonyms do not match across sites."""
        a = Pseudonymiser.from_state_dir(tmp_path / "a").address("10.20.0.15")
        b = Pseudonymiser.from_state_dir(tmp_path / "b").address("10.20.0.15")
        assert a != b

    def test_disabled_still_keeps_the_secret(self, tmp_path: Path) -> None:
        """Turning pseudonyms off then on again gives the pseudonyms of before."""
        before = Pseudonymiser.from_state_dir(tmp_path).address("10.0.0.9")
        assert Pseudonymiser.from_state_dir(tmp_path, enabled=False).address("10.0.0.9") == "10.0.0.9"
        assert Pseudonymiser.from_state_dir(tmp_path).address("10.0.0.9") == before

    def test_create_never_replaces(self, tmp_path: Path) -> None:
        """A creator that loses the race keeps the winner's secret (link, not rename)."""
        path = tmp_path / SECRET_FILE
        _create_secret(path)
        winner = path.read_bytes()
        _create_secret(path)
        assert path.read_bytes() == winner
        assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]

    def test_concurrent_starts_agree(self, tmp_path: Path) -> None:
        """Processes starting together on a fresh state directory all get the same pseudonym."""
        script = (
            "import sys; from pathlib import Path; from douane.daemon.pseudonym import Pseudonymiser;"
            "print(Pseudonymiser.from_state_dir(Path(sys.argv[1])).address('10.1.2.3'))"
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        outputs = {proc.communicate(timeout=60)[0].strip().splitlines()[-1] for proc in procs}
        assert len(outputs) == 1
        assert PSEUDONYM.fullmatch(outputs.pop())

    def test_wrong_size_secret(self, tmp_path: Path) -> None:
        """A truncated secret file is refused with its path, not silently replaced."""
        (tmp_path / SECRET_FILE).write_bytes(b"abc")
        with pytest.raises(PseudonymError, match=re.escape(str(tmp_path / SECRET_FILE))):
            Pseudonymiser.from_state_dir(tmp_path)

    def test_unusable_state_dir(self, tmp_path: Path) -> None:
        """A state directory that is a file gives a PseudonymError naming the secret's path."""
        state = tmp_path / "file"
        state.write_text("")
        with pytest.raises(PseudonymError, match="cannot create or read"):
            Pseudonymiser.from_state_dir(state)


class TestAlreadyCanonical:
    """The shortcut never says "canonical" where `ipaddress` would write the address otherwise."""

    @given(value=st.integers(0, 2**128 - 1), v6=st.booleans(), form=st.sampled_from(
        ["str", "ntop", "exploded", "upper", "mapped"]))
    @example(value=0xFFFF_0102_0304, v6=True, form="ntop")  # ::ffff:1.2.3.4, dotted by inet_ntop
    @example(value=0x0001_0000_0000_0000_0000_0000_0000_0001, v6=True, form="ntop")  # 1::1
    @example(value=0x2001_0db8_0000_0001_0000_0000_0000_0001, v6=True, form="ntop")  # two zero runs
    def test_agrees_with_ipaddress(self, value: int, v6: bool, form: str) -> None:
        address = ipaddress.ip_address(value if v6 else value % 2**32) if v6 or form != "mapped" else (
            ipaddress.IPv6Address(0xFFFF_0000_0000 | value % 2**32))
        packed = address.packed
        text = {
            "str": str(address),
            "ntop": socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed),
            "exploded": address.exploded,
            "upper": str(address).upper(),
            "mapped": str(address),
        }[form]
        expected = str(ipaddress.ip_address(text))
        assert canonical_address(text) == expected
        if already_canonical(text):
            assert text == expected

    @given(text=st.text(max_size=50))
    def test_any_text(self, text: str) -> None:
        """Random text is never taken as canonical unless `ipaddress` writes it so."""
        if already_canonical(text):
            assert str(ipaddress.ip_address(text)) == text

    def test_records_take_the_shortcut(self) -> None:
        """The texts douane's records hold (inet_ntop) are recognised without `ipaddress`."""
        assert already_canonical("10.0.0.5") and already_canonical("fd00::5")
        assert already_canonical("2001:db8::1:0:0:1")
        assert not already_canonical("2001:DB8::1") and not already_canonical("010.0.0.5")
        assert not already_canonical("::ffff:1.2.3.4")  # dotted IPv6: left to ipaddress

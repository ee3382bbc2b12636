"""douane.geo.files: reading a database file whatever its compression, refusing bad ones."""

from __future__ import annotations

import gzip
import lzma
import os
from pathlib import Path

import pytest

from douane.geo.files import DatabaseError, read_database

CONTENT = b"8.8.8.0/24\t15169\n" * 100


class TestReadDatabase:
    @pytest.mark.parametrize("pack", [lambda b: b, gzip.compress, lzma.compress], ids=["plain", "gzip", "xz"])
    def test_formats(self, tmp_path: Path, pack) -> None:  # type: ignore[no-untyped-def]
        """Plain, gzip and xz files give the same content, whatever their name."""
        path = tmp_path / "database.bin"
        path.write_bytes(pack(CONTENT))
        assert read_database(path) == CONTENT

    def test_limit(self, tmp_path: Path) -> None:
        """A file larger than the limit once decompressed is refused."""
        path = tmp_path / "bomb.gz"
        path.write_bytes(gzip.compress(bytes(10_000)))
        with pytest.raises(DatabaseError, match="larger than 1000 bytes"):
            read_database(path, limit=1000)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (gzip.compress(CONTENT, mtime=0)[:30], "truncated"),
            (b"\x1f\x8b\x08\x00garbage after a gzip magic", "not a valid gzip file"),
            (b"\xfd7zXZ\x00garbage after an xz magic", "not a valid xz file"),
        ],
    )
    def test_bad_compression(self, tmp_path: Path, content: bytes, message: str) -> None:
        """A damaged compressed file is refused with what is wrong."""
        path = tmp_path / "bad"
        path.write_bytes(content)
        with pytest.raises(DatabaseError, match=message):
            read_database(path)

    def test_missing(self, tmp_path: Path) -> None:
        """A missing file is refused as not found."""
        with pytest.raises(DatabaseError, match="file not found"):
            read_database(tmp_path / "absent")

    def test_unreadable(self, tmp_path: Path) -> None:
        """A file the daemon may not read is refused as permission denied."""
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path = tmp_path / "secret"
        path.write_bytes(CONTENT)
        path.chmod(0)
        with pytest.raises(DatabaseError, match="permission denied"):
            read_database(path)

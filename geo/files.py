"""Read a database file into memory, decompressing gzip or xz, with a clear error for a bad file."""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path
from typing import BinaryIO

# A configured file is untrusted: a small compressed file can expand without bound ("zip bomb").
# The largest database douane expects (a full-table IPASN or a city mmdb) is well under 200 MiB.
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024
_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


class DatabaseError(Exception):
    """A database file is missing, unreadable or not in the expected format.

    The message is for a person: it says what is wrong, not where (the caller adds the path).
    """


def _read_limited(stream: BinaryIO, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise DatabaseError(f"larger than {limit} bytes once decompressed; refusing to load it")
        parts.append(chunk)
    return b"".join(parts)


def read_database(path: Path, limit: int | None = None) -> bytes:
    """Return the content of `path`, decompressed when it is gzip or xz.

    The format is recognised by its magic bytes rather than by the file name, so a `.gz` that is
    not gzip gives a precise error and a renamed file still works.

    Raises:
        DatabaseError: the file is missing, unreadable, badly compressed or too large.
    """
    if limit is None:
        limit = MAX_DECOMPRESSED_BYTES
    try:
        with path.open("rb") as raw:
            head = raw.read(6)
            raw.seek(0)
            if head.startswith(_GZIP_MAGIC):
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    return _read_limited(unzipped, limit)  # type: ignore[arg-type]
            if head.startswith(_XZ_MAGIC):
                with lzma.LZMAFile(raw, mode="rb") as unxz:
                    return _read_limited(unxz, limit)  # type: ignore[arg-type]
            return _read_limited(raw, limit)
    except FileNotFoundError:
        raise DatabaseError("file not found") from None
    except PermissionError:
        raise DatabaseError("permission denied") from None
    except IsADirectoryError:
        raise DatabaseError("is a directory, not a file") from None
    except EOFError:
        raise DatabaseError("compressed data is truncated") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DatabaseError(f"not a valid gzip file ({error})") from None
    except lzma.LZMAError as error:
        raise DatabaseError(f"not a valid xz file ({error})") from None
    except OSError as error:
        raise DatabaseError(f"cannot read it ({error.strerror or error})") from None

"""False positives and throughput of the identifier detectors (douane.daemon.identifiers).

Three corpora, each cut into windows of ``--window`` bytes (a flow's first bytes, as the daemon
scans them), each window passed to `scan_identifiers`:

- ``random``: seeded pseudo-random bytes (`random.Random(seed).randbytes`), reproducible, the
  statistics of encrypted or compressed payload.
- ``printable``: seeded random printable text where half the characters are digits, with spaces,
  newlines, letters and punctuation: far denser in digit runs than any real payload, the worst
  case for a detector that looks for digits.
- ``text``: ordinary text and JSON found on this machine (the Python standard library's sources and
  JSON files, /usr/share/doc, JSON data files of installed packages) plus generated JSON records
  with what web traffic carries in numbers: French and international phone numbers, prices,
  ISO and epoch timestamps (s, ms, µs), order and invoice numbers, EAN-13 codes, SIRET numbers,
  card-like 16-digit numbers, IBANs, UUIDs, IP addresses, postcodes, and the 15-digit numbers of
  mobile telemetry (IMEI, French IMSI).

Every match on these corpora is a false positive (none of them carries a real identifier). The
script also counts structural candidates (what the patterns find before the key, check digit or
context decides: ``nir_shape``, ``nir_valid``, and ``nir_vetoed_imei_imsi`` among the valid ones)
so that each rule's share of the filtering shows, what UAI and RPPS would give without their
context requirement, and the context keywords met.

Throughput is reported as MB/s and as a ratio against a baseline measured in the same run on the
same windows: one ``re.finditer(rb"\\d{15}")`` pass (the cheapest regex that could look for a NIR).
Figures are printed, never asserted.

Usage::

    python bench/identifiers.py                 # 100 MB per corpus
    python bench/identifiers.py --mb 10 --seed 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import sysconfig
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from douane.daemon import identifiers
from douane.daemon.identifiers import DETECTORS, scan_identifiers

MB = 1_000_000
DEFAULT_MB = 100
DEFAULT_SEED = 1
DEFAULT_WINDOW = 16_384
# Share of the text corpus made of generated JSON records (the rest is files from this machine).
GENERATED_SHARE = 0.3

BASELINE = re.compile(rb"\d{15}")

# --- corpora -------------------------------------------------------------------------------------


def random_bytes(size: int, seed: int) -> bytes:
    """Reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def _printable_table() -> bytes:
    """A byte -> printable character table: 128 digits, 32 spaces, 8 newlines, 64 letters, 24 marks.

    Mapping uniform random bytes through it gives half digits, so digit runs of every length are
    common (a 15-digit run bounded by non-digits every ~65 kB).
    """
    table = b"0123456789" * 12 + b"01234567"  # 128
    table += b" " * 32 + b"\n" * 8  # 40
    table += b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789AB"[:64]  # 64
    table += b'.,;:-_/"{}[]()=&|^<>+*#@'  # 24
    assert len(table) == 256
    return table


def printable_digits(size: int, seed: int) -> bytes:
    """Reproducible random printable text, half digits."""
    return random.Random(seed + 1).randbytes(size).translate(_printable_table())


def _ean13(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(12)]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _luhn(rng: random.Random, n: int) -> str:
    digits = [rng.randrange(10) for _ in range(n - 1)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _luhn_prefixed(rng: random.Random, prefix: str, n: int) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(n - 1 - len(prefix)))
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    return body + str((10 - total % 10) % 10)


def json_record(rng: random.Random) -> bytes:
    """One realistic JSON record of the kind web and API traffic carries (one line)."""
    t = 1_735_689_600 + rng.randrange(2 * 365 * 86_400)  # 2025-2026
    rec = {
        "id": rng.randrange(1, 10**9),
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "order": f"CMD-{rng.randrange(2020, 2027)}-{rng.randrange(10**6):06d}",
        "order_number": rng.randrange(10**7, 10**12),
        "invoice": f"F{rng.randrange(10**10):010d}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{rng.randrange(1000):03d}Z",
        "ts": t,
        "ts_ms": t * 1000 + rng.randrange(1000),
        "ts_us": t * 1_000_000 + rng.randrange(10**6),
        "phone": "0" + str(rng.randrange(1, 8)) + "".join(f" {rng.randrange(100):02d}" for _ in range(4)),
        "mobile": f"+33 6 {rng.randrange(10**8):08d}",
        "intl_phone": f"+1{rng.randrange(10**10):010d}",
        "price": round(rng.uniform(0.5, 5000), 2),
        "amount_cents": rng.randrange(10**9),
        "currency": "EUR",
        "ean": _ean13(rng),
        "siret": _luhn(rng, 14),
        "card": _luhn(rng, 16),
        "iban": f"FR76 {rng.randrange(10**4):04d} {rng.randrange(10**4):04d} {rng.randrange(10**4):04d} "
        f"{rng.randrange(10**4):04d} {rng.randrange(10**4):04d} {rng.randrange(10**3):03d}",
        "ip": ".".join(str(rng.randrange(256)) for _ in range(4)),
        "postcode": f"{rng.randrange(1000, 96000):05d}",
        "qty": rng.randrange(1, 20),
        "lat": round(rng.uniform(41, 51), 6),
        "lon": round(rng.uniform(-5, 9), 6),
        "session": f"{rng.getrandbits(64):016x}",
        "tracking": f"{rng.randrange(10**13):013d}",
        # 15-digit numbers that mobile and telemetry traffic carries, and that can look like a NIR:
        # an IMEI (TAC starting 35, 86 or 01, Luhn digit: 3GPP TS 23.003 section 6.2.1) and a
        # French IMSI (MCC 208, MNC of the four networks, 10-digit MSIN: TS 23.003 section 2.2).
        "imei": _luhn_prefixed(rng, rng.choice(("35", "86", "01")), 15),
        "imsi": f"208{rng.choice(('01', '10', '15', '20'))}{rng.randrange(10**10):010d}",
    }
    return json.dumps(rec).encode() + b"\n"


def generated_json(size: int, seed: int) -> bytes:
    """Reproducible JSON lines of realistic records, about `size` bytes."""
    rng = random.Random(seed + 2)
    out: list[bytes] = []
    total = 0
    while total < size:
        line = json_record(rng)
        out.append(line)
        total += len(line)
    return b"".join(out)[:size]


def text_files() -> Iterator[tuple[str, Path]]:
    """Ordinary text files on this machine, in a fixed order: (source label, path).

    The sources take turns, one file each, so that a smaller corpus still mixes all of them.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    doc = Path("/usr/share/doc")
    sources = {
        "python-stdlib-py": [p for p in sorted(stdlib.rglob("*.py")) if "site-packages" not in p.parts],
        "python-stdlib-json": [p for p in sorted(stdlib.rglob("*.json")) if "site-packages" not in p.parts],
        "usr-share-doc": [
            p for p in sorted(doc.rglob("*")) if p.is_file() and not p.is_symlink()
        ] if doc.is_dir() else [],
        "site-packages-json": sorted(purelib.rglob("*.json")),
    }
    iters = {label: iter(paths) for label, paths in sources.items()}
    while iters:
        for label in list(iters):
            path = next(iters[label], None)
            if path is None:
                del iters[label]
            else:
                yield label, path


def ordinary_text(size: int, seed: int) -> tuple[bytes, Counter[str]]:
    """Files from this machine, then generated JSON, `size` bytes in all; and the bytes per source."""
    want_files = int(size * (1 - GENERATED_SHARE))
    parts: list[bytes] = []
    sources: Counter[str] = Counter()
    total = 0
    for label, path in text_files():
        if total >= want_files:
            break
        try:
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if b"\x00" in raw[:4096]:  # binary, not text
            continue
        raw = raw[: want_files - total]
        parts.append(raw)
        sources[label] += len(raw)
        total += len(raw)
    generated = generated_json(size - total, seed)
    parts.append(generated)
    sources["generated-json"] += len(generated)
    return b"\n".join(parts)[:size], sources


# --- measuring -----------------------------------------------------------------------------------


def windows(data: bytes, size: int) -> list[bytes]:
    """The corpus cut into scan windows."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def timed(fn: Callable[[list[bytes]], object], chunks: list[bytes]) -> float:
    """Seconds for one call of fn over the chunks."""
    start = time.perf_counter()
    fn(chunks)
    return time.perf_counter() - start


def scan_all(chunks: list[bytes]) -> Counter[str]:
    """Detector counts summed over the windows."""
    total: Counter[str] = Counter()
    for chunk in chunks:
        total.update(scan_identifiers(chunk))
    return total


def baseline_all(chunks: list[bytes]) -> int:
    """The baseline: one \\d{15} regex pass over each window."""
    finditer = BASELINE.finditer
    return sum(1 for chunk in chunks for _ in finditer(chunk))


def keyword_hits(chunk: bytes, hits: Counter[str]) -> None:
    """Add the context keywords of one window, per detector (the module's prefilter-and-match loop)."""
    low = chunk.lower()
    pos = 0
    while (hit := identifiers._PREFILTER.search(low, pos)) is not None:
        k = identifiers._KEYWORDS.match(chunk, hit.start())
        if k is None or k.lastgroup is None:
            pos = hit.start() + 1
            continue
        hits[f"{k.lastgroup}_keywords"] += 1
        pos = k.end()


def candidates(chunks: list[bytes]) -> dict[str, int]:
    """Structural candidates before each final check, context-free counts for UAI and RPPS, and the
    context keywords found."""
    nir_shape = nir_key_ok = nir_vetoed = uai_shape = uai_letter_ok = rpps_shape = rpps_luhn_ok = 0
    hits: Counter[str] = Counter()
    for chunk in chunks:
        keyword_hits(chunk, hits)
        for m in identifiers._NIR.finditer(chunk):
            nir_shape += 1
            if identifiers._nir_valid(m.group().replace(b" ", b"")):
                nir_key_ok += 1
                start = m.start()
                lo = max(0, start - identifiers._NOT_NIR_WINDOW)
                nir_vetoed += identifiers._NOT_NIR.search(chunk, lo, start) is not None
        for m in identifiers._UAI.finditer(chunk):
            uai_shape += 1
            uai_letter_ok += identifiers._uai_valid(m.group())
        for m in identifiers._RPPS.finditer(chunk):
            rpps_shape += 1
            rpps_luhn_ok += identifiers._luhn_valid(m.group()[-11:])
    return {
        "nir_shape": nir_shape,
        "nir_valid": nir_key_ok,
        "nir_vetoed_imei_imsi": nir_vetoed,
        "uai_shape": uai_shape,
        "uai_letter_valid_no_context": uai_letter_ok,
        "rpps_shape": rpps_shape,
        "rpps_luhn_valid_no_context": rpps_luhn_ok,
        **{f"{d}_keywords": hits[f"{d}_keywords"] for d in ("ins", "rpps", "ine", "uai")},
    }


def measure(name: str, data: bytes, window: int) -> dict[str, object]:
    """Counts, candidates and throughput of one corpus."""
    chunks = windows(data, window)
    mb = len(data) / MB
    scan_all(chunks[:64])  # warm the caches of both before timing either
    baseline_all(chunks[:64])
    t_base = timed(baseline_all, chunks)
    t0 = time.perf_counter()
    counts = scan_all(chunks)
    t_scan = time.perf_counter() - t0
    return {
        "corpus": name,
        "mb": round(mb, 3),
        "windows": len(chunks),
        "counts": {d: counts.get(d, 0) for d in DETECTORS},
        "per_mb": {d: round(counts.get(d, 0) / mb, 4) if mb else 0.0 for d in DETECTORS},
        "candidates": candidates(chunks),
        "scan_mb_s": round(mb / t_scan, 1) if t_scan else None,
        "baseline_mb_s": round(mb / t_base, 1) if t_base else None,
        "ratio_vs_baseline": round(t_base / t_scan, 3) if t_scan else None,
    }


def report(result: dict[str, object]) -> None:
    """Print one corpus's figures as aligned text."""
    counts = result["counts"]
    per_mb = result["per_mb"]
    assert isinstance(counts, dict) and isinstance(per_mb, dict)
    print(f"\n== {result['corpus']}: {result['mb']} MB in {result['windows']} windows")
    for d in DETECTORS:
        print(f"  {d:5} false positives: {counts[d]:>8}   ({per_mb[d]} per MB)")
    print("  candidates:", json.dumps(result["candidates"]))
    print(
        f"  throughput: scan {result['scan_mb_s']} MB/s, baseline \\d{{15}} {result['baseline_mb_s']} MB/s,"
        f" ratio {result['ratio_vs_baseline']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=DEFAULT_MB, help="MB per corpus (default 100)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="bytes per scan window")
    parser.add_argument("--corpus", choices=("random", "printable", "text"), action="append",
                        help="corpora to run (default: all three)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per corpus")
    args = parser.parse_args(argv)
    size = int(args.mb * MB)
    print(f"identifier detectors: {size / MB:g} MB per corpus, seed {args.seed}, window {args.window} B,"
          f" Python {sys.version.split()[0]}")
    for name in args.corpus or ("random", "printable", "text"):
        if name == "random":
            data = random_bytes(size, args.seed)
        elif name == "printable":
            data = printable_digits(size, args.seed)
        else:
            data, sources = ordinary_text(size, args.seed)
            print("\ntext corpus sources (bytes):", json.dumps(dict(sources)))
        result = measure(name, data, args.window)
        report(result)
        if args.json:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

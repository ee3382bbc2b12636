"""Collected flows named from the live capture's DNS cache (daemon/dnsnames.py)."""

from __future__ import annotations

import pytest

from douane.daemon.collector import record_to_flow
from douane.daemon.dnscache import DnsCache
from douane.daemon.dnsnames import DnsNames
from douane.daemon.flows import DEFAULT_INTERNAL, Flow, InternalNetworks
from douane.daemon.netflow import FlowRecord

INTERNAL = InternalNetworks(DEFAULT_INTERNAL)
CLIENT, OTHER_CLIENT = bytes([10, 0, 0, 5]), bytes([10, 0, 0, 6])
AZURE = bytes([20, 199, 120, 7])
T = 1_800_000_000.0
NAME = "hdh.blob.core.windows.net"


def collected(src: bytes = CLIENT, dport: int = 443, proto: int = 6, first: float = T + 10,
              hostname: str | None = None, source: str | None = None, sport: int = 40000) -> Flow:
    """A flow as the collector makes it from one exporter record, optionally named by the exporter."""
    record = FlowRecord(proto, src, sport, AZURE, dport, 4, 260, 0, 0, first, first + 1, 0x1B,
                        None, 1, hostname, source)
    return record_to_flow(record, INTERNAL)


def namer(cache: DnsCache, connections: int = 65_536) -> tuple[DnsNames, list[Flow]]:
    declared: list[Flow] = []
    return DnsNames(cache, declared.append, connections, clock=lambda: T + 1_000), declared


@pytest.fixture
def cache() -> DnsCache:
    cache = DnsCache()
    cache.add(CLIENT, AZURE, NAME, 300, T)
    return cache


class TestDnsNames:
    def test_named_from_the_clients_answer(self, cache: DnsCache) -> None:
        """A collected flow to an address the client was given in a DNS answer carries that name,
        from `dns`, and goes on to the pipeline."""
        names, declared = namer(cache)
        names(collected())
        [flow] = declared
        assert (flow.hostname, flow.hostname_source) == (NAME, "dns")
        assert names.named == 1

    def test_any_clients_answer_otherwise(self, cache: DnsCache) -> None:
        """A client whose own answer was not seen gets the name any client was given (as capture)."""
        names, declared = namer(cache)
        names(collected(src=OTHER_CLIENT))
        assert (declared[0].hostname, declared[0].hostname_source) == (NAME, "dns")

    def test_exporters_better_name_kept(self, cache: DnsCache) -> None:
        """An SNI the exporter sent ranks above a DNS answer and is never replaced."""
        names, declared = namer(cache)
        names(collected(hostname="other.example.org", source="tls_sni"))
        assert (declared[0].hostname, declared[0].hostname_source) == ("other.example.org", "tls_sni")
        assert names.named == 0

    @pytest.mark.parametrize(("dport", "proto"), [(53, 17), (5353, 17), (0, 1)],
                             ids=["to-resolver", "mdns", "icmp"])
    def test_not_named(self, cache: DnsCache, dport: int, proto: int) -> None:
        """As capture: a flow to a resolver is not named after the resolver, and only TCP and UDP
        flows are named from DNS."""
        names, declared = namer(cache)
        names(collected(dport=dport, proto=proto, sport=40000 if proto != 1 else 0))
        assert declared[0].hostname is None

    def test_unknown_address_unnamed(self) -> None:
        """No answer for the address: no name."""
        names, declared = namer(DnsCache())
        names(collected())
        assert (declared[0].hostname, declared[0].hostname_source) == (None, None)

    def test_expired_answer_unnamed(self, cache: DnsCache) -> None:
        """An answer past its TTL when the connection began does not name it."""
        names, declared = namer(cache)
        names(collected(first=T + 301))
        assert declared[0].hostname is None

    def test_record_after_a_captured_flow_met_the_expired_answer(self, cache: DnsCache) -> None:
        """A record arriving after the answer expired, of a connection that began while it was
        valid, is named, even when a captured flow has looked the address up in between."""
        names, declared = namer(cache)
        assert cache.lookup(CLIENT, AZURE, T + 900) is None  # a captured flow of the client, later on
        names(collected(first=T + 200))
        assert (declared[0].hostname, declared[0].hostname_source) == (NAME, "dns")

    def test_later_record_of_a_connection_keeps_its_name(self, cache: DnsCache) -> None:
        """A long connection reported again after its DNS answer expired keeps the name it had,
        as a captured flow keeps the name it got at its first packet."""
        names, declared = namer(cache)
        names(collected(first=T + 10))
        names(collected(first=T + 400))  # the same 5-tuple, a later active-timeout export
        names(collected(first=T + 400, sport=40001))  # another connection: the answer has expired
        assert [f.hostname for f in declared] == [NAME, NAME, None]

    def test_remembered_connections_bounded(self, cache: DnsCache) -> None:
        """Connections remembered are bounded; the oldest goes first."""
        names, declared = namer(cache, connections=2)
        for sport in (40000, 40001, 40002):
            names(collected(sport=sport))
        assert len(names) == 2
        for sport in (40000, 40002):
            names(collected(first=T + 400, sport=sport))
        assert [f.hostname for f in declared[3:]] == [None, NAME]

    @pytest.mark.parametrize(("wall", "named"), [(T + 100, True), (T + 1_000, False)])
    def test_exporter_clock_ahead(self, cache: DnsCache, wall: float, named: bool) -> None:
        """A record dated after the wall clock (an exporter whose clock runs ahead) is looked up at
        the wall clock's time (the answer expires at T + 300)."""
        declared: list[Flow] = []
        DnsNames(cache, declared.append, clock=lambda: wall)(collected(first=T + 5_000))
        assert (declared[0].hostname == NAME) is named

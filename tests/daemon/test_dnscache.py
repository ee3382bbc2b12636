"""The DNS answer cache: per-client and global names, TTLs, clamping and bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from douane.daemon.dnscache import DnsCache

CLIENT = bytes([10, 0, 0, 5])
CLIENT2 = bytes([192, 168, 1, 20])
ADDRESS = bytes([20, 199, 120, 7])
ADDRESS6 = bytes.fromhex("20010db8000000000000000000000007")
T0 = 1_764_324_000.0


class TestDnsCache:
    def test_per_client_name_first(self) -> None:
        """A client gets the name it was told, even when another client was told another since."""
        cache = DnsCache()
        cache.add(CLIENT, ADDRESS, "hdh.blob.core.windows.net", 300, T0)
        cache.add(CLIENT2, ADDRESS, "other.blob.core.windows.net", 300, T0 + 1)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 2) == "hdh.blob.core.windows.net"
        assert cache.lookup(CLIENT2, ADDRESS, T0 + 2) == "other.blob.core.windows.net"

    def test_global_fallback(self) -> None:
        """A client that asked nothing gets the most recent name any client was told."""
        cache = DnsCache()
        cache.add(CLIENT, ADDRESS, "a.example", 300, T0)
        cache.add(CLIENT2, ADDRESS, "b.example", 300, T0 + 1)
        assert cache.lookup(bytes([10, 9, 9, 9]), ADDRESS, T0 + 2) == "b.example"
        assert cache.lookup(None, ADDRESS, T0 + 2) == "b.example"

    def test_unknown_client_adds_global_only(self) -> None:
        """An answer without a known client is found by every client, through the global entry."""
        cache = DnsCache()
        cache.add(None, ADDRESS6, "www.doctolib.fr", 300, T0)
        assert len(cache) == 1
        assert cache.lookup(CLIENT, ADDRESS6, T0) == "www.doctolib.fr"

    def test_most_recent_wins(self) -> None:
        """A later answer for the same client and address replaces the earlier one."""
        cache = DnsCache()
        cache.add(CLIENT, ADDRESS, "old.example", 300, T0)
        cache.add(CLIENT, ADDRESS, "new.example", 300, T0 + 10)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 11) == "new.example"
        assert len(cache) == 2  # one per-client entry, one global

    def test_expiry(self) -> None:
        """An entry is found until its TTL runs out, then neither it nor the global one is."""
        cache = DnsCache(min_ttl=0)
        cache.add(CLIENT, ADDRESS, "a.example", 120, T0)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 119.9) == "a.example"
        assert cache.lookup(CLIENT, ADDRESS, T0 + 120) is None
        assert len(cache) == 2  # kept until pushed out: a later question may be about the past

    def test_expired_now_still_answers_for_the_past(self) -> None:
        """Once a question about the present has met an expired entry, a question about a time
        when it was valid (a collected flow record, reported after its connection began) still
        gets the name."""
        cache = DnsCache(min_ttl=0)
        cache.add(CLIENT, ADDRESS, "a.example", 120, T0)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 500) is None
        assert cache.lookup(None, ADDRESS, T0 + 500) is None
        assert cache.lookup(CLIENT, ADDRESS, T0 + 60) == "a.example"
        assert cache.lookup(None, ADDRESS, T0 + 60) == "a.example"

    def test_expired_client_entry_falls_back_to_fresh_global(self) -> None:
        """When the client's own answer expired, a fresher answer to another client is used."""
        cache = DnsCache(min_ttl=0)
        cache.add(CLIENT, ADDRESS, "a.example", 60, T0)
        cache.add(CLIENT2, ADDRESS, "b.example", 600, T0 + 30)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 100) == "b.example"

    def test_short_ttl_clamped_up(self) -> None:
        """A 5-second TTL lives min_ttl seconds, so the name of a long flow is not lost."""
        cache = DnsCache(min_ttl=60)
        cache.add(CLIENT, ADDRESS, "a.example", 5, T0)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 59) == "a.example"
        assert cache.lookup(CLIENT, ADDRESS, T0 + 60) is None

    def test_long_ttl_clamped_down(self) -> None:
        """A week-long TTL lives max_ttl seconds."""
        cache = DnsCache(max_ttl=86_400)
        cache.add(CLIENT, ADDRESS, "a.example", 7 * 86_400, T0)
        assert cache.lookup(CLIENT, ADDRESS, T0 + 86_399) == "a.example"
        assert cache.lookup(CLIENT, ADDRESS, T0 + 86_400) is None

    def test_bounded_under_flood(self) -> None:
        """A million answers for distinct addresses never hold more than max_entries."""
        cache = DnsCache(max_entries=1000)
        for i in range(1_000_000):
            cache.add(CLIENT if i & 1 else None, i.to_bytes(4, "big"), "flood.example", 300, T0)
            if i % 100_000 == 0:
                assert len(cache) <= 1000
        assert len(cache) <= 1000
        # The newest survive, the oldest are gone.
        assert cache.lookup(CLIENT, (999_999).to_bytes(4, "big"), T0) == "flood.example"
        assert cache.lookup(CLIENT, (0).to_bytes(4, "big"), T0) is None

    def test_refreshed_entry_survives_eviction(self) -> None:
        """An address answered again moves to the back of the eviction queue."""
        cache = DnsCache(max_entries=4)
        cache.add(None, b"\x01\x01\x01\x01", "kept.example", 300, T0)
        cache.add(None, b"\x02\x02\x02\x02", "b.example", 300, T0)
        cache.add(None, b"\x03\x03\x03\x03", "c.example", 300, T0)
        cache.add(None, b"\x01\x01\x01\x01", "kept.example", 300, T0 + 1)
        cache.add(None, b"\x04\x04\x04\x04", "d.example", 300, T0 + 2)
        cache.add(None, b"\x05\x05\x05\x05", "e.example", 300, T0 + 3)
        assert cache.lookup(None, b"\x01\x01\x01\x01", T0 + 4) == "kept.example"
        assert cache.lookup(None, b"\x02\x02\x02\x02", T0 + 4) is None

    def test_ipv4_and_ipv6_keys_do_not_collide(self) -> None:
        """A 16-byte client with a 4-byte address is not a 4-byte client with a 16-byte address."""
        cache = DnsCache()
        cache.add(ADDRESS6, ADDRESS, "v6client.example", 300, T0)
        assert cache.lookup(ADDRESS, ADDRESS6, T0) is None

    def test_bad_arguments(self) -> None:
        """Impossible sizes and TTL bounds are refused with the argument named."""
        with pytest.raises(ValueError, match="max_entries"):
            DnsCache(max_entries=1)
        with pytest.raises(ValueError, match="min_ttl"):
            DnsCache(min_ttl=100, max_ttl=10)
        with pytest.raises(ValueError, match="min_ttl"):
            DnsCache(min_ttl=-1)


class TestAddAll:
    @given(
        max_entries=st.integers(2, 6),
        batches=st.lists(
            st.tuples(
                st.sampled_from([None, CLIENT, CLIENT2]),
                st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a.example", "b.example"]),
                                   st.integers(0, 200_000)), max_size=5),
            ),
            max_size=8,
        ),
    )
    def test_same_as_one_add_per_address(
        self, max_entries: int, batches: list[tuple[bytes | None, list[tuple[int, str, int]]]]
    ) -> None:
        """One answer's addresses added at once leave the cache as adding them one by one does."""
        one_by_one = DnsCache(max_entries=max_entries)
        at_once = DnsCache(max_entries=max_entries)
        for step, (client, answers) in enumerate(batches):
            rows = [(bytes([10, 0, 0, a]), name, ttl) for a, name, ttl in answers]
            for address, name, ttl in rows:
                one_by_one.add(client, address, name, ttl, T0 + step)
            at_once.add_all(client, rows, T0 + step)
            assert len(at_once) <= max_entries
        assert list(at_once._entries.items()) == list(one_by_one._entries.items())

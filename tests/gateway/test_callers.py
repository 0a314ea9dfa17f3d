"""What a replica keeps about a session's model access, and when it must forget it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from gateway.model.callers import Caller, CallerCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def caller() -> Caller:
    return Caller(uuid.uuid4(), uuid.uuid4(), "alice", None, None, ())


def hearing_cache(
    ttl: float = 60.0, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic
) -> CallerCache:
    cache = CallerCache(ttl, capacity, clock)
    cache.hearing()
    return cache


def test_an_answer_is_kept_for_its_run_until_it_expires() -> None:
    clock = Clock()
    cache = hearing_cache(ttl=60, clock=clock)
    alice = caller()
    cache.keep(cache.lookup_begins(), alice, run=7)
    assert cache.get(alice.session_id, 7) is alice
    assert cache.get(alice.session_id, None) is alice  # a session token names no run
    assert cache.get(alice.session_id, 8) is None  # a key of another run: looked up
    clock.now += 60
    assert cache.get(alice.session_id, 7) is None


def test_a_revocation_forgets_the_session_and_voids_lookups_under_way() -> None:
    cache = hearing_cache()
    alice, bob = caller(), caller()
    cache.keep(cache.lookup_begins(), alice, run=1)
    mark = cache.lookup_begins()  # bob's lookup has begun ...
    cache.revoked(str(alice.session_id))  # ... when a notification arrives
    cache.keep(mark, bob, run=1)  # it may have read a row from before the change
    assert cache.get(alice.session_id, 1) is None
    assert cache.get(bob.session_id, 1) is None
    cache.keep(cache.lookup_begins(), bob, run=1)
    assert cache.get(bob.session_id, 1) is bob


def test_nothing_is_kept_while_deaf_and_everything_is_forgotten_on_hearing_again() -> None:
    cache = CallerCache(60)
    alice = caller()
    assert cache.lookup_begins() is None  # never heard yet
    cache.keep(cache.lookup_begins(), alice, run=1)
    assert cache.get(alice.session_id, 1) is None
    cache.hearing()
    cache.keep(cache.lookup_begins(), alice, run=1)
    mark = cache.lookup_begins()
    cache.deaf()
    assert cache.get(alice.session_id, 1) is None
    cache.hearing()
    cache.keep(mark, alice, run=1)  # begun before the deaf spell
    assert cache.get(alice.session_id, 1) is None


def test_a_payload_that_is_no_id_forgets_everything() -> None:
    cache = hearing_cache()
    alice = caller()
    cache.keep(cache.lookup_begins(), alice, run=1)
    cache.revoked("not-a-uuid")
    assert cache.get(alice.session_id, 1) is None


def test_zero_seconds_keeps_nothing_and_capacity_drops_the_oldest() -> None:
    off = hearing_cache(ttl=0)
    alice = caller()
    off.keep(off.lookup_begins(), alice, run=1)
    assert off.get(alice.session_id, 1) is None
    small = hearing_cache(capacity=2)
    first, second, third = caller(), caller(), caller()
    for each in (first, second, third):
        small.keep(small.lookup_begins(), each, run=1)
    assert small.get(first.session_id, 1) is None
    assert small.get(third.session_id, 1) is third

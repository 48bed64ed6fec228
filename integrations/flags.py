"""Ring flags: short-lived "a wake-up for this is already queued" markers.

`flag_set` is set-if-absent with a lifetime; it answers whether this caller set it (and so
should send the wake-up). It runs on every webhook and every outbox write, so where the cache
is Redis it is one ``SET NX EX`` on a client the process keeps, instead of Django's cache API,
which builds a new Redis client object per call (a fifth of a webhook's CPU time). Keys are
the cache's own (`cache.make_key`): a flag set here is the cache's key, and the other way round.
Other cache backends go through `cache.add` / `cache.delete`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import redis
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

_T = TypeVar("_T")


@functools.cache
def _redis() -> redis.Redis | None:
    if not isinstance(caches["default"], RedisCache):
        return None
    location = settings.CACHES["default"]["LOCATION"]
    # redis-py's pool notices a fork and opens new connections in the child.
    return redis.Redis.from_url(location if isinstance(location, str) else location[0])


def flag_set(name: str, ttl_s: int) -> bool:
    """Set the flag unless it is set; True when this call set it."""
    client = _redis()
    if client is None:
        return bool(cache.add(name, 1, timeout=ttl_s))
    return bool(client.set(cache.make_key(name), b"1", nx=True, ex=max(1, int(ttl_s))))


def flag_clear(name: str) -> None:
    flag_take(name)


def flag_take(name: str) -> bool:
    """Clear the flag; True when it was set."""
    client = _redis()
    if client is None:
        return bool(cache.delete(name))
    return bool(client.delete(cache.make_key(name)))


def flag_extend(name: str, ttl_s: int) -> bool:
    """Give a set flag a new lifetime (a hold renewed while its holder works); False when it
    is not set (it lapsed)."""
    client = _redis()
    if client is None:
        return bool(cache.touch(name, timeout=ttl_s))
    return bool(client.expire(cache.make_key(name), max(1, int(ttl_s))))


def flag_alone(
    name: str,
    work: Callable[[], _T],
    *,
    again: Callable[[], None],
    hold_s: int,
    renew_s: float,
) -> _T | None:
    """`work()` unless another process does the work of `name` now: then that one is asked
    to call `again()` (ring for another round) when it ends, and this returns None. The hold
    is renewed every `renew_s` while the work goes on and lapses `hold_s` after its process
    dies. A caller turned away while the holder ends either takes the hold itself or is seen
    by the holder: no request is lost between them."""
    hold, wanted = f"{name}:hold", f"{name}:wanted"
    if not flag_set(hold, hold_s):
        flag_set(wanted, hold_s * 6)
        if not flag_set(hold, hold_s):
            return None
        flag_clear(wanted)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_s):
            flag_extend(hold, hold_s)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        return work()
    finally:
        stop.set()
        renewer.join()
        flag_clear(hold)
        if flag_take(wanted):
            again()

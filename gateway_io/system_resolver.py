"""DNS-resource names resolved the way the host resolves names, with a 30 s cache (Firezone: ``resolve``,
``resolve_addresses`` and ``dns_cache`` in ``rust/gateway/src/eventloop.rs``).

Theory of operation
-------------------
The core orders a resolution with a ``ResolveDomain`` command and takes the answer as ``DomainResolved``
/ ``DomainResolveFailed`` (it times the request out itself); the driver hands the command to
:meth:`SystemResolver.resolve_domain`. Resolution goes through the C library's ``getaddrinfo`` (run in a
worker thread by the event loop, never on it), once per address family as Firezone does, so
``/etc/hosts``, ``nsswitch.conf`` and ``resolv.conf`` (search list, options) apply exactly as for any
other program on the host; under ``ip netns exec`` that includes ``/etc/netns/NAME/hosts``. A family
that fails contributes nothing; both failing is an error. The addresses come back sorted (IPv4 first).

The cache (decision 0165) maps a name (lower case, no final dot) to its addresses for :data:`CACHE_TTL`
after the lookup finished. Only successes are kept, as ``moka``'s ``try_get_with`` does in Firezone, so a
name that fails is asked again next time. Concurrent requests for a name that is being looked up wait for
that one lookup instead of starting their own (``try_get_with`` coalesces the same way). The cache holds
at most :data:`CACHE_ENTRIES` names: entries are kept in insertion order, which is also expiry order
(one TTL for all), so expired entries are dropped from the front on every insertion and, when it is
still full, the oldest entry goes. ``stats`` counts ``hits``, ``misses``, ``coalesced`` and ``failures``.

The forwarder of SRV/TXT queries is not affected: it keeps asking the ``resolv.conf`` nameservers
directly (:class:`gateway_io.resolver.Resolver`), as Firezone's does.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import anyio

from gateway_core.addr import IPAddress
from gateway_core.stats import Stats
from gateway_io.resolver import DOMAIN_TIMEOUT, ResolveError

log = logging.getLogger(__name__)

CACHE_TTL = 30.0
"""Seconds a resolved name is answered from the cache (Firezone: ``DNS_TTL``, 30 s, ``eventloop.rs:41``)."""

CACHE_ENTRIES = 4096
"""Names the cache holds at most. Firezone's cache has no size bound (only the TTL); a client allowed a
wildcard DNS resource can make the gateway resolve any number of names within one TTL, so ours is bounded.
An entry is a name and a few addresses (a few hundred bytes): 4096 of them stay around a megabyte."""

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _key(domain: str) -> str:
    return domain.rstrip(".").lower()


async def getaddrinfo_addresses(name: str, family: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for ``name`` in ``family`` (raises ``OSError``)."""
    infos = await anyio.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


class _Pending:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: tuple[IPAddress, ...] | ResolveError = ResolveError("lookup abandoned")


class SystemResolver:
    """``getaddrinfo`` with a bounded TTL cache (see the module docstring)."""

    def __init__(
        self,
        *,
        ttl: float = CACHE_TTL,
        max_entries: int = CACHE_ENTRIES,
        timeout: float = DOMAIN_TIMEOUT,
        lookup: Callable[[str, int], Awaitable[Sequence[IPAddress]]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("the cache holds at least one entry")
        self.ttl = ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self._lookup = lookup or getaddrinfo_addresses
        self._clock = clock or anyio.current_time
        self._cache: dict[str, tuple[float, tuple[IPAddress, ...]]] = {}
        """name -> (expiry, addresses), in insertion (= expiry) order."""
        self._pending: dict[str, _Pending] = {}
        self.stats = Stats()

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, domain: str) -> tuple[IPAddress, ...] | None:
        """The cached addresses of ``domain`` if they are still fresh."""
        entry = self._cache.get(_key(domain))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | ResolveError:
        """The addresses of ``domain`` (sorted, IPv4 first), or why there are none; never raises."""
        key = _key(domain)
        fresh = self.cached(key)
        if fresh is not None:
            self.stats.incr("hits")
            log.debug("resolved %s from the cache: %s", key, ", ".join(map(str, fresh)))
            return fresh
        pending = self._pending.get(key)
        if pending is not None:
            self.stats.incr("coalesced")
            await pending.done.wait()
            return pending.result
        self.stats.incr("misses")
        pending = self._pending[key] = _Pending()
        try:
            pending.result = await self._resolve(key)
        finally:
            del self._pending[key]
            pending.done.set()
        if isinstance(pending.result, tuple):
            self._store(key, pending.result)
        else:
            self.stats.incr("failures")
        return pending.result

    async def _resolve(self, name: str) -> tuple[IPAddress, ...] | ResolveError:
        log.debug("resolving %s with getaddrinfo", name)
        results: dict[int, list[IPAddress] | ResolveError] = {}

        async def lookup(family: int) -> None:
            try:
                got = await self._lookup(name, family)
                results[family] = list(got)
            except OSError as e:
                results[family] = ResolveError(f"{name}: {e.strerror or e}")
            except (UnicodeError, ValueError) as e:  # a name IDNA cannot encode (too long, bad labels)
                results[family] = ResolveError(f"{name[:80]!r}: {type(e).__name__}: {e}")

        with anyio.move_on_after(self.timeout):
            async with anyio.create_task_group() as tg:
                for family in _FAMILIES:
                    tg.start_soon(lookup, family)
        found = [r for r in results.values() if isinstance(r, list)]
        if not found:
            errors = sorted({str(r) for r in results.values()}) or [
                f"{name}: timeout after {self.timeout:g} s"
            ]
            return ResolveError("; ".join(errors))
        addresses = {ip for r in found for ip in r}
        return tuple(sorted(addresses, key=lambda ip: (ip.version, int(ip))))

    def _store(self, key: str, addresses: tuple[IPAddress, ...]) -> None:
        now = self._clock()
        cache = self._cache
        cache.pop(key, None)
        while cache:  # expiry order: stop at the first fresh entry once there is room
            name = next(iter(cache))
            expiry = cache[name][0]
            if expiry > now and len(cache) < self.max_entries:
                break
            del cache[name]
            if expiry > now:
                self.stats.incr("evicted")
        cache[key] = (now + self.ttl, addresses)

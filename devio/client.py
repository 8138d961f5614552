"""``python -m devio.client``: the dev client on a real host, with a TUN device and a UDP socket.

Theory of operation
-------------------
:class:`devpeers.client.DevClient` (ICE, TURN, WireGuard initiator, resource routing, DNS-resource proxy
IPs with ``assigned_ips`` / ``domain_status``) is driven here by a real clock and real IO, so that ordinary
programs on the client host (ping, curl, dig, iperf3) use the tunnel:

- **TUN** (``gateway_io.tun.TunDevice``, default ``tun-fzclient``): MTU 1280, the client's tunnel
  addresses, routes for the DNS-resource proxy ranges (``100.96.0.0/11``, ``fd00:2021:1111:8000::/107``),
  the stub resolver :data:`SENTINEL_V4` and, once granted, each CIDR resource. A packet read from it is a
  DNS query for the stub resolver (answered below) or goes to ``DevClient.send_packet`` (routed to a
  gateway and encrypted). The client is made with ``write_tun=True``: decrypted packets come back as its
  ``WriteTun`` commands and are written to the TUN.
- **DNS**: ``/etc/netns/<ns>/resolv.conf`` points at :data:`SENTINEL_V4` (written by the topology).
  A/AAAA for a DNS resource are answered locally with the proxy IPs ``DevClient.query_dns`` assigns;
  other types for a DNS resource (SRV, TXT ...) are forwarded through the tunnel to the gateway's tunnel
  address at port 53535, and the answer is handed back to the asking program as coming from the stub;
  names that are not resources get REFUSED.
- **UDP**: one IPv4 socket (``gateway_io.udp.UdpSocket``, port 52625 or any) carries ICE, TURN and
  WireGuard; every datagram goes to ``DevClient.handle_datagram``.
- **Signalling**: HTTP GETs to the dev portal's client API. It long-polls
  ``/client/poll`` (held up to :data:`LONG_POLL`) for grants, the gateway's candidates and relay changes, and
  sends the client's candidates with ``/client/ice``. When a connection fails or the gateway says goodbye
  (a restarted gateway has a new key), the client asks for its resources again with
  ``/client/authorize`` after :data:`REAUTHORIZE_DELAY`, as Firezone's client re-requests a flow.
- **Loop**: one asyncio loop; readers on the TUN and UDP descriptors take up to :data:`BATCH` packets per
  wake-up, then the client's commands are executed and the single timer is re-armed at
  ``poll_timeout()``. A status file (``--status``) is written every second (connected gateways, counters).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from devpeers.client import DNS_FORWARD_PORT, DevClient
from devpeers.client_types import ClientResource, GatewayGrant, GoodbyeReceived, SignalIce
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit, WriteTun
from gateway_core.dns.wire import question as wire_question
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError
from gateway_core.node.node import RelayConfig
from gateway_core.turn.types import RelaySocket
from gateway_core.wire.ip import PROTO_UDP, parse_ip, parse_udp
from gateway_core.wire.ipbuild import build_udp_packet
from gateway_io.tun import TunDevice
from gateway_io.udp import UdpSocket, UdpSockets

log = logging.getLogger("devio.client")

SENTINEL_V4 = ipaddress.IPv4Address("100.100.111.1")
"""The client's stub resolver (Firezone's first IPv4 DNS sentinel, ``client.rs``)."""
SENTINEL_RAW = SENTINEL_V4.packed
"""The same, as it appears in a packet (the hot path compares bytes)."""
CLIENT_PORT = 52625
"""snownet's preferred UDP port."""
PROXY_RANGES = ("100.96.0.0/11", "fd00:2021:1111:8000::/107")
"""DNS-resource proxy ranges routed into the TUN (``rust/connlib/tunnel/src/client.rs``)."""
MTU = 1280
"""Firezone's tunnel MTU (``ip-packet/src/lib.rs:35``)."""
LONG_POLL = 1.0
"""Seconds the portal may hold one poll of the client feed (it answers as soon as there are events)."""
REAUTH_CHECK = 0.1
"""Seconds between two looks at the connections waiting to be asked for again."""
PORTAL_RETRY = 0.5
"""Seconds between two attempts while the portal is unreachable."""
REAUTHORIZE_DELAY = 1.0
"""Seconds after a failed connection or a goodbye before the client asks for its resources again."""
BATCH = 128
"""Packets taken from one descriptor per wake-up (the other descriptor and the timer get their turn); a
TUN super-packet (up to ~52 segments of a 64 KiB TSO packet) is never cut."""
STATUS_INTERVAL = 0.25
"""Seconds between two writes of the status file (tests poll it for "connected")."""
HTTP_TIMEOUT = 2.0
"""Seconds for one request to the portal."""


async def http_get(
    base: str, path: str, params: list[tuple[str, str]], timeout: float = HTTP_TIMEOUT
) -> dict[str, Any]:
    """GET ``base`` + ``path`` with query ``params``; the JSON answer (any HTTP status)."""
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    target = path + ("?" + urllib.parse.urlencode(params) if params else "")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HTTP_TIMEOUT)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    _, _, body = raw.partition(b"\r\n\r\n")
    result: dict[str, Any] = json.loads(body.decode() or "{}")
    return result


def _sockaddr(text: str | None) -> SocketAddr | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return SocketAddr(ipaddress.ip_address(host.strip("[]")), int(port))


def relays_from_json(items: list[dict[str, Any]]) -> tuple[RelayConfig, ...]:
    return tuple(
        RelayConfig(
            r["id"], RelaySocket(_sockaddr(r.get("v4")), _sockaddr(r.get("v6"))), r["username"], r["password"]
        )
        for r in items
    )


class ClientProcess:
    """See the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client_id = uuid.UUID(args.client_id)
        self.t0 = time.monotonic_ns()
        key = base64.b64decode(args.private_key)
        self.client = DevClient(
            "client",
            key,
            ipaddress.IPv4Address(args.ipv4),
            ipaddress.IPv6Address(args.ipv6),
            SeededEntropy(os.urandom(32)),
            Instant(0),
            time.time_ns(),
            write_tun=True,
        )
        self.tun: TunDevice | None = None
        self.udp: UdpSockets | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._dns: dict[int, tuple[IPAddress, int]] = {}
        self._next_dns_port = 30000
        self._signals: asyncio.Queue[SignalIce] = asyncio.Queue()
        self._routes: set[str] = set()
        self._new_routes: list[str] = []
        self._granted: dict[str, str] = {}  # resource id -> gateway id
        self._reauth: dict[str, float] = {}
        self._seen_events = 0
        self.counters = {
            "tun_in": 0,
            "tun_out": 0,
            "udp_in": 0,
            "udp_out": 0,
            "dns_local": 0,
            "dns_forwarded": 0,
        }
        self.stop = asyncio.Event()

    def now(self) -> Instant:
        return Instant(time.monotonic_ns() - self.t0)

    # --- set-up -------------------------------------------------------------------------------------------

    async def _ip(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec("ip", *argv, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            log.warning("ip %s: %s", " ".join(argv), err.decode().strip())

    async def _route(self, cidr: str) -> None:
        if cidr in self._routes:
            return
        self._routes.add(cidr)
        fam = "-6" if ":" in cidr else "-4"
        await self._ip(fam, "route", "replace", cidr, "dev", self.args.tun)

    async def setup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tun = TunDevice.open(self.args.tun)
        name = self.tun.name
        await self._ip("link", "set", "dev", name, "mtu", str(MTU))
        await self._ip("addr", "add", f"{self.args.ipv4}/32", "dev", name)
        await self._ip("-6", "addr", "add", f"{self.args.ipv6}/128", "dev", name)
        await self._ip("link", "set", "dev", name, "up")
        for cidr in (*PROXY_RANGES, f"{SENTINEL_V4}/32"):
            await self._route(cidr)
        self.udp = UdpSockets.bind(CLIENT_PORT, mark=None)  # each family the host has
        self.loop.add_reader(self.tun.fileno(), self._on_tun)
        for sock in self.udp.sockets:
            self.loop.add_reader(sock.fileno(), self._on_udp, sock)
        udp = ", ".join(str(s.local) for s in self.udp.sockets)
        log.info("client %s: TUN %s, UDP %s", self.client_id, name, udp)

    # --- data plane ---------------------------------------------------------------------------------------

    def _on_udp(self, sock: UdpSocket) -> None:
        for _ in range(BATCH):
            got = sock.try_receive()
            if got is None:
                break
            self.counters["udp_in"] += 1
            local, remote, payload, _ecn = got
            self.client.handle_datagram(self.now(), local, remote, payload)
        self._flush()

    def _on_tun(self) -> None:
        """What the TUN has (at most :data:`BATCH` packets; a super-packet's segments all at once) goes to
        the client as one batch; DNS queries to the stub are answered here."""
        assert self.tun is not None
        batch: list[bytes] = []
        for _ in range(BATCH):
            try:
                packet = self.tun.try_read()
            except Exception:  # the device went away: stop
                self.stop.set()
                return
            if packet is None:
                break
            if self._is_stub_query(packet):
                continue
            batch.append(packet)
        self.counters["tun_in"] += len(batch)
        if batch:
            self.client.send_packets(self.now(), batch)
            if len(self.client.events) > 1000:  # unroutable sends (IPv6 router solicitations ...) are logged
                del self.client.events[:500]
        self._flush()

    def _is_stub_query(self, packet: bytes) -> bool:
        """A DNS query to the stub resolver's sentinel address: answered (or forwarded) here; True."""
        if len(packet) < 28 or packet[0] != 0x45 or packet[9] != PROTO_UDP or packet[16:20] != SENTINEL_RAW:
            return False
        try:
            ip = parse_ip(packet)
            udp = parse_udp(ip.payload)
        except DecodeError:
            return True
        if udp.dport != 53:
            return False
        self._dns_query(ip.src, udp.sport, udp.payload)
        return True

    def _to_tun(self, packet: bytes) -> bytes | None:
        """A decrypted packet for the TUN (``None``: drop it); a forwarded DNS answer goes back as coming
        from the stub."""
        try:
            ip = parse_ip(packet)
            if ip.proto == PROTO_UDP:
                udp = parse_udp(ip.payload)
                if udp.sport == DNS_FORWARD_PORT and udp.dport in self._dns:
                    app_ip, app_port = self._dns.pop(udp.dport)
                    packet = build_udp_packet(SENTINEL_V4, app_ip, 53, app_port, udp.payload)
        except DecodeError:
            return None
        self.counters["tun_out"] += 1
        return packet

    def _dns_query(self, src: IPAddress, sport: int, payload: bytes) -> None:
        assert self.tun is not None
        # The question is read straight from the wire (a query to forward is passed on unchanged; parsing it
        # with dnspython cost this client more than the gateway spends per forwarded query).
        try:
            if len(payload) < 12 or payload[2] & 0x80 or payload[4:6] != b"\x00\x01":
                return
            text, end = wire_question(payload)
        except DecodeError:
            return
        name = text.rstrip(".").lower()
        qtype = (payload[end - 4] << 8) | payload[end - 3]
        now = self.now()
        hit = self.client.dns_resource_for(name)
        if hit is not None and qtype not in (1, 28):  # neither A nor AAAA: forwarded to the gateway
            gateway = hit[1]
            grant = self.client.grants.get(gateway)
            if grant is not None:
                port = self._next_dns_port
                self._next_dns_port = 30000 + (self._next_dns_port - 29999) % 10000
                self._dns[port] = (src, sport)
                fwd = build_udp_packet(
                    self.client.tunnel_v4, grant.tunnel_v4, port, DNS_FORWARD_PORT, payload
                )
                self.client.send_raw(now, gateway, fwd)
                self.counters["dns_forwarded"] += 1
                return
        try:
            q = dns.message.from_wire(payload)
            question = q.question[0]
        except Exception:  # dnspython raises many kinds for malformed queries: drop them
            return
        rtype = dns.rdatatype.to_text(question.rdtype)
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.RA
        if hit is None:
            resp.set_rcode(dns.rcode.REFUSED)
        else:
            ans = self.client.query_dns(now, name, rtype)
            if ans is not None and ans.records:
                resp.answer.append(dns.rrset.from_text_list(question.name, 1, "IN", rtype, list(ans.records)))
        self.counters["dns_local"] += 1
        self.tun.write(build_udp_packet(SENTINEL_V4, src, 53, sport, resp.to_wire()))

    def _flush(self) -> None:
        """Execute the client's commands: datagrams and TUN packets in batches (one ``sendmsg`` with
        ``UDP_SEGMENT`` per run to the gateway, one TUN write per coalesced run), as the gateway's driver."""
        assert self.udp is not None and self.loop is not None and self.tun is not None
        sends: list[Transmit] = []
        writes: list[bytes] = []
        while (cmd := self.client.poll_command()) is not None:
            if isinstance(cmd, Transmit):
                sends.append(cmd)
            elif isinstance(cmd, WriteTun):
                packet = self._to_tun(cmd.packet)
                if packet is not None:
                    writes.append(packet)
            elif isinstance(cmd, SignalIce):
                self._signals.put_nowait(cmd)
        if sends:
            self.counters["udp_out"] += len(sends) - len(self.udp.send_batch(sends))
        if writes:
            self.tun.write_batch(writes)
        self._check_connections()
        deadline = self.client.poll_timeout()
        at = None if deadline is None else int(deadline.at)
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = max(0.0, (at - int(self.now())) / 1e9)
            self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.client.handle_timeout(self.now())
        self._flush()

    # --- control plane ------------------------------------------------------------------------------------

    def _check_connections(self) -> None:
        """A failed connection or a goodbye: ask the portal again for the resources of that gateway."""
        if self._seen_events == len(self.client.events) and not self._goodbye_pending():
            return
        for _, gateway, what in self.client.events[self._seen_events :]:
            if what == "failed":
                self._schedule_reauth(gateway)
        self._seen_events = len(self.client.events)

    def _goodbye_pending(self) -> bool:
        if not self.client.received:
            return False
        for rec in self.client.received:
            if isinstance(rec, GoodbyeReceived):
                self._schedule_reauth(rec.gateway)
        self.client.received.clear()
        return False

    def _schedule_reauth(self, gateway: str) -> None:
        for rid, gw in self._granted.items():
            if gw == gateway and rid not in self._reauth:
                log.info("connection to %s lost: asking for resource %s again", gateway, rid)
                self._reauth[rid] = time.monotonic() + REAUTHORIZE_DELAY

    async def portal_task(self) -> None:
        """Long-poll the client feed; apply its events in order."""
        base = self.args.portal
        after = 0
        epoch: str | None = None
        while not self.stop.is_set():
            try:
                got = await http_get(
                    base,
                    "/client/poll",
                    [("client", str(self.client_id)), ("after", str(after)), ("wait", str(LONG_POLL))],
                    timeout=HTTP_TIMEOUT + LONG_POLL,
                )
                if got.get("epoch") != epoch:  # a new portal run: its events start again at 1
                    if epoch is not None and after:
                        log.info("the portal restarted: reading its events from the start")
                        epoch, after = got.get("epoch"), 0
                        continue
                    epoch = got.get("epoch")
                for event in got.get("events", []):
                    self._event(event)
                after = int(got.get("next", after))
                self._flush()
                while self._new_routes:
                    await self._route(self._new_routes.pop(0))
            except (OSError, TimeoutError, ValueError) as e:
                log.debug("portal unreachable: %s", e)
                await asyncio.sleep(PORTAL_RETRY)

    async def sender_task(self) -> None:
        """The client's candidates to the portal, in order; retried while the portal is unreachable."""
        base = self.args.portal
        while not self.stop.is_set():
            sig = await self._signals.get()
            params = [("client", str(self.client_id))] + [("candidate", c) for c in sig.candidates]
            if sig.invalidate:
                params.append(("invalidate", "1"))
            while not self.stop.is_set():
                try:
                    await http_get(base, "/client/ice", params)
                    break
                except (OSError, TimeoutError, ValueError):
                    await asyncio.sleep(PORTAL_RETRY)

    async def reauthorize_task(self) -> None:
        """Ask again for the resources of a lost gateway once their delay has passed."""
        base = self.args.portal
        while not self.stop.is_set():
            await asyncio.sleep(REAUTH_CHECK)
            for rid, when in sorted(self._reauth.items()):
                if time.monotonic() < when:
                    continue
                try:
                    r = await http_get(
                        base, "/client/authorize", [("client", str(self.client_id)), ("resource", rid)]
                    )
                except (OSError, TimeoutError, ValueError):
                    r = {}
                if r.get("ok"):
                    del self._reauth[rid]
                else:
                    self._reauth[rid] = time.monotonic() + REAUTHORIZE_DELAY

    def _event(self, event: dict[str, Any]) -> None:
        now = self.now()
        kind = event.get("type")
        if kind == "grant":
            res = event["resource"]
            grant = GatewayGrant(
                event["gateway"],
                base64.b64decode(event["public_key"]),
                base64.b64decode(event["psk"]),
                (event["client_ice"][0], event["client_ice"][1]),
                (event["gateway_ice"][0], event["gateway_ice"][1]),
                ipaddress.IPv4Address(event["tunnel_v4"]),
                ipaddress.IPv6Address(event["tunnel_v6"]),
                relays_from_json(event["relays"]),
            )
            resource = ClientResource(uuid.UUID(res["id"]), res["kind"], res["address"])
            log.info("granted %s %s through %s", res["kind"], res["address"], event["gateway_name"])
            self.client.grant(now, grant, resource)
            self._granted[res["id"]] = event["gateway"]
            if res["kind"] == "cidr":
                self._new_routes.append(res["address"])
        elif kind == "candidates":
            self.client.add_remote_candidates(
                now, event["gateway"], event["candidates"], bool(event["invalidate"])
            )
        elif kind == "relays":
            self.client.set_relays(now, relays_from_json(event["relays"]))

    def paths(self) -> dict[str, dict[str, Any]]:
        """Per gateway: the nominated path's kind (``peer_to_peer``, ``relay_to_peer`` ...), where it
        sends to, the connection's selected relay, and the ICE candidates on both sides (``"host
        [fd01::2]:52625"``: the gateway's in ``remote``, ours in ``local``)."""
        out: dict[str, dict[str, Any]] = {}
        for gid, conn in sorted(self.client.node.connections.items()):
            ps = conn.peer_socket
            out[gid] = {
                "kind": None if ps is None else ps.kind.value,
                "dest": None if ps is None else str(ps.dest),
                "relay": conn.relay,
                "remote": [f"{c.kind.value} {c.addr}" for c in conn.agent.remote_candidates()],
                "local": [f"{c.kind.value} {c.addr}" for c in conn.agent.local_candidates()],
            }
        return out

    def status(self) -> dict[str, Any]:
        return {
            "connected": sorted(g for g in self.client.grants if self.client.is_connected(g)),
            "paths": self.paths(),
            "counters": dict(self.counters),
            "stats": self.client.stats.snapshot(),
        }

    async def status_task(self) -> None:
        path = Path(self.args.status) if self.args.status else None
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), STATUS_INTERVAL)
            if path is not None:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.status(), sort_keys=True))
                tmp.replace(path)

    def close(self) -> None:
        if self.loop is not None:
            for obj in (self.tun, *(self.udp.sockets if self.udp is not None else ())):
                if obj is not None:
                    with contextlib.suppress(Exception):
                        self.loop.remove_reader(obj.fileno())
        if self.udp is not None:
            self.udp.close()
        if self.tun is not None:
            self.tun.close()


async def _amain(args: argparse.Namespace) -> int:
    c = ClientProcess(args)
    await c.setup()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, c.stop.set)
    print(f"dev-client: up on {c.tun.name if c.tun else '?'}", flush=True)
    tasks = [
        asyncio.ensure_future(t)
        for t in (c.portal_task(), c.sender_task(), c.reauthorize_task(), c.status_task())
    ]
    try:
        await c.stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        c.close()
        print(f"dev-client: stopped {json.dumps(c.counters, sort_keys=True)}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dev-client", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--portal", required=True, help="the dev portal's HTTP base URL, e.g. http://10.0.0.2:8081"
    )
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--private-key", required=True, help="the client's WireGuard private key (base64)")
    ap.add_argument("--ipv4", required=True, help="the client's tunnel IPv4 address")
    ap.add_argument("--ipv6", required=True, help="the client's tunnel IPv6 address")
    ap.add_argument("--tun", default="tun-fzclient")
    ap.add_argument("--status", help="write the status as JSON to this file (5 times a second)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())

"""System tests: recursive resolution against a real unbound, inside a network namespace the test creates
(root; CI runs as root, never skipped).

unbound runs in the namespace on 127.0.0.1:53 (started by the test with a configuration it writes,
stopped by PID) and answers local data for ``fz.test`` (A, AAAA, SRV, TXT, a TXT answer too big for 512
bytes) and the probe name ``firezone.dev``. Beside it: 127.0.0.2:53, a UDP socket and a TCP listener that
never answer (timeouts), and 127.0.0.3:53 where nothing listens (refused). The resolver's sockets are
created inside the namespace (the test thread enters it for the whole test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_address
from pathlib import Path

import anyio
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.dns.forwarding import DnsUpstreamFailed, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.inputs import Input
from gateway_io.dns_server import TcpDnsServer, UdpDnsServer
from gateway_io.resolver import ResolveError, Resolver, parse_resolv_conf, read_nameservers, udp_exchange
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]

UNBOUND = SocketAddr(ip_address("127.0.0.1"), 53)
SILENT = SocketAddr(ip_address("127.0.0.2"), 53)
REFUSING = SocketAddr(ip_address("127.0.0.3"), 53)
BIG_TXT = [f'"{"x" * 200}-{i}"' for i in range(4)]  # ~820 bytes of answer: over 512, under 1200

CONFIG = """server:
    interface: 127.0.0.1
    port: 53
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    num-threads: 1
    local-zone: "fz.test." static
    local-data: "www.fz.test. 60 IN A 10.0.0.1"
    local-data: "www.fz.test. 60 IN AAAA fd00::1"
    local-data: "v4only.fz.test. 60 IN A 10.0.0.4"
    local-data: "_sip._tcp.fz.test. 60 IN SRV 10 20 5060 www.fz.test."
    local-data: 'txt.fz.test. 60 IN TXT "hello"'
{big}
    local-zone: "firezone.dev." static
    local-data: "firezone.dev. 60 IN A 192.0.2.80"
remote-control:
    control-enable: no
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fzres") as name:
        sh("ip", "addr", "add", "127.0.0.2/8", "dev", "lo", ns=name)
        sh("ip", "addr", "add", "127.0.0.3/8", "dev", "lo", ns=name)
        yield name


@contextlib.contextmanager
def silent_server(ns: str) -> Iterator[None]:
    """127.0.0.2:53 over UDP and TCP: receives and never answers."""
    with inside(ns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with udp, tcp:
        udp.bind((str(SILENT.ip), 53))
        tcp.bind((str(SILENT.ip), 53))
        tcp.listen(8)
        yield


@pytest.fixture
async def unbound(ns: str) -> AsyncIterator[None]:
    with tempfile.TemporaryDirectory(prefix="fzunbound") as tmp:
        os.chmod(tmp, 0o755)
        conf = Path(tmp) / "unbound.conf"
        conf.write_text(CONFIG.format(dir=tmp, big=big_lines()))
        sh("unbound-checkconf", str(conf))
        log = open(Path(tmp) / "out.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unbound", "-d", "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            probe = dns.message.make_query("firezone.dev.", "A").to_wire()
            with anyio.fail_after(20), inside(ns):
                while True:
                    assert proc.poll() is None, (Path(tmp) / "out.log").read_text()
                    try:
                        with anyio.fail_after(0.5):
                            await udp_exchange(probe, UNBOUND, mark=None)
                        break
                    except (OSError, TimeoutError):
                        await anyio.sleep(0.05)
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()


def big_lines() -> str:
    return "\n".join(f"    local-data: 'big.fz.test. 60 IN TXT {t}'" for t in BIG_TXT)


def query(name: str, rdtype: str, *, edns: bool = False) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    q.id = 0x1234
    return q.to_wire()


@pytest.mark.anyio
async def test_picks_the_fastest_answering_nameserver(ns: str, unbound: None) -> None:
    with silent_server(ns), inside(ns):
        resolver = Resolver([SILENT, REFUSING, UNBOUND], probe_timeout=0.5)
        assert resolver.fastest is None
        assert await resolver.evaluate() == UNBOUND
        assert set(resolver.rtts) == {UNBOUND}


@pytest.mark.anyio
async def test_forward_srv_and_txt_over_udp_and_tcp(ns: str, unbound: None) -> None:
    with inside(ns):
        resolver = Resolver([UNBOUND])
        await resolver.evaluate()
        for transport in (DnsTransport.UDP, DnsTransport.TCP):
            wire = query("_sip._tcp.fz.test.", "SRV")
            answer = await resolver.forward(wire, transport)
            assert isinstance(answer, bytes), answer
            msg = dns.message.from_wire(answer)
            assert msg.id == 0x1234 and msg.rcode() == dns.rcode.NOERROR
            assert [rd.to_text() for rd in msg.answer[0]] == ["10 20 5060 www.fz.test."]
            txt = dns.message.from_wire(await resolver.forward(query("txt.fz.test.", "TXT"), transport))
            assert [rd.to_text() for rd in txt.answer[0]] == ['"hello"']

        result = await resolver.forward_command(
            ForwardDnsQuery(7, DnsTransport.UDP, query("txt.fz.test.", "TXT"))
        )
        assert isinstance(result, DnsUpstreamResponse) and result.query_id == 7
        nx = dns.message.from_wire(await resolver.forward(query("nope.fz.test.", "TXT"), DnsTransport.UDP))
        assert nx.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.anyio
async def test_truncated_udp_answer_is_asked_again_over_tcp(ns: str, unbound: None) -> None:
    with inside(ns):
        wire = query("big.fz.test.", "TXT")  # no EDNS: unbound truncates at 512 bytes over UDP
        plain = Resolver([UNBOUND], tcp_on_truncation=False)
        await plain.evaluate()
        truncated = await plain.forward(wire, DnsTransport.UDP)
        assert isinstance(truncated, bytes) and dns.message.from_wire(truncated).flags & dns.flags.TC
        assert len(truncated) <= 512

        resolver = Resolver([UNBOUND])
        await resolver.evaluate()
        whole = await resolver.forward(wire, DnsTransport.UDP)
        assert isinstance(whole, bytes) and len(whole) > 512
        msg = dns.message.from_wire(whole)
        assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == len(BIG_TXT)


@pytest.mark.anyio
async def test_timeout_and_refused_are_error_values(ns: str, unbound: None) -> None:
    with silent_server(ns), inside(ns):
        resolver = Resolver([SILENT], timeout=0.3, probe_timeout=0.3)
        assert await resolver.evaluate() is None
        assert await resolver.forward(query("txt.fz.test.", "TXT"), DnsTransport.UDP) == ResolveError(
            "no nameserver available"
        )
        resolver.fastest = SILENT  # as if it had answered a probe once and then went silent
        for transport in (DnsTransport.UDP, DnsTransport.TCP):
            err = await resolver.forward(query("txt.fz.test.", "TXT"), transport)
            assert isinstance(err, ResolveError) and "timeout" in err.reason
        failed = await resolver.forward_command(
            ForwardDnsQuery(3, DnsTransport.TCP, query("txt.fz.test.", "TXT"))
        )
        assert isinstance(failed, DnsUpstreamFailed) and failed.query_id == 3

        refusing = Resolver([REFUSING], timeout=2)
        refusing.fastest = REFUSING
        for transport in (DnsTransport.UDP, DnsTransport.TCP):
            err = await refusing.forward(query("txt.fz.test.", "TXT"), transport)
            assert isinstance(err, ResolveError) and "refused" in err.reason.lower()


@pytest.mark.anyio
async def test_a_nameserver_that_went_silent_loses_fastest(ns: str, unbound: None) -> None:
    """Firezone's RTT map (``rust/connlib/tunnel/src/io/nameserver_set.rs``) is never cleared; here each
    answered round replaces it."""
    with silent_server(ns), inside(ns):
        resolver = Resolver([SILENT, UNBOUND], probe_timeout=0.3)
        resolver.fastest, resolver.rtts = SILENT, {SILENT: 0.001}  # fastest once, silent since
        assert await resolver.evaluate() == UNBOUND
        assert set(resolver.rtts) == {UNBOUND}
        # A round in which nobody answers keeps the last result: nothing better is known.
        resolver.probe_name = "unanswerable.invalid"
        assert await resolver.evaluate() == UNBOUND


@pytest.mark.anyio
async def test_resolve_domain_a_and_aaaa(ns: str, unbound: None) -> None:
    with silent_server(ns), inside(ns):
        resolver = Resolver([SILENT, UNBOUND], timeout=0.3, probe_timeout=0.3)  # SILENT first: tried, skipped
        assert await resolver.resolve_domain("www.fz.test") == (ip_address("10.0.0.1"), ip_address("fd00::1"))
        assert await resolver.resolve_domain("v4only.fz.test.") == (ip_address("10.0.0.4"),)
        nx = await resolver.resolve_domain("missing.fz.test")
        assert isinstance(nx, ResolveError) and "NXDOMAIN" in nx.reason

        dead = Resolver([SILENT], timeout=0.2, domain_timeout=1.0)
        err = await dead.resolve_domain("www.fz.test")
        assert isinstance(err, ResolveError)


def test_resolv_conf_parsing(tmp_path: Path) -> None:
    text = (
        "# comment\nsearch example.com\nnameserver 10.0.0.53\nnameserver fe80::1%eth0 ; x\nnameserver bogus\n"
    )
    text += "nameserver 10.0.0.53\noptions ndots:2\n"
    assert parse_resolv_conf(text) == [
        SocketAddr(ip_address("10.0.0.53"), 53),
        SocketAddr(ip_address("fe80::1"), 53),
    ]
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\n")
    assert read_nameservers(path) == [SocketAddr(ip_address("127.0.0.53"), 53)]
    with pytest.raises(OSError):
        read_nameservers(tmp_path / "missing")


@pytest.mark.anyio
async def test_layer4_servers_forward_through_the_resolver(ns: str, unbound: None) -> None:
    """The IO pieces composed as the driver will compose them (without the core's decisions): queries
    from ``dig`` reach our UDP/TCP servers, go upstream to unbound and come back."""
    with inside(ns):
        resolver = Resolver([UNBOUND])
        assert await resolver.evaluate() == UNBOUND
        udp = await UdpDnsServer.bind(("127.0.0.1", 53535))
        async with anyio.create_task_group() as tg:
            tcp = await TcpDnsServer.bind(("127.0.0.1", 53535), task_group=tg)

            async def serve(server: UdpDnsServer | TcpDnsServer) -> None:
                async for q in server:
                    answer = await resolver.forward(q.message, q.transport)
                    assert isinstance(answer, bytes), answer
                    await server.send_response(q.remote, answer)

            tg.start_soon(serve, udp)
            tg.start_soon(serve, tcp)

            async def dig(*args: str) -> list[str]:
                argv = ["ip", "netns", "exec", ns, "dig", "@127.0.0.1", "-p", "53535", "+short", "+tries=1"]
                result = await anyio.run_process([*argv, *args])
                return sorted(result.stdout.decode().split("\n")[:-1])

            for transport in ("+notcp", "+tcp"):
                assert await dig(transport, "_sip._tcp.fz.test", "SRV") == ["10 20 5060 www.fz.test."]
                assert await dig(transport, "txt.fz.test", "TXT") == ['"hello"']
            # Without EDNS unbound truncates the big answer over UDP; the resolver asks again over TCP.
            big = await dig("+notcp", "+noedns", "+ignore", "big.fz.test", "TXT")
            assert len(big) == len(BIG_TXT)
            tg.cancel_scope.cancel()
        await udp.aclose()
        await tcp.aclose()


class Reports:
    """What a submitting resolver reported, with a way to wait for a count of them."""

    def __init__(self) -> None:
        self.items: list[Input] = []

    def __call__(self, inp: Input) -> None:
        self.items.append(inp)

    async def wait(self, n: int, limit: float = 20) -> list[Input]:
        with anyio.fail_after(limit):
            while len(self.items) < n:
                await anyio.sleep(0.01)
        return self.items


def with_id(wire: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + wire[2:]


@pytest.mark.anyio
async def test_submitted_queries_share_rotating_sockets_and_keep_their_ids(ns: str, unbound: None) -> None:
    """300 queries submitted at once (ids chosen by clients, colliding on purpose) go out on shared
    sockets under ids of the upstream's own, rotated after 256; each answer comes back under its own
    query id with the client's id put back, and the retired socket closes once it has nothing pending."""
    with inside(ns):
        resolver = Resolver([UNBOUND])
        assert await resolver.evaluate() == UNBOUND
        reports = Reports()
        async with anyio.create_task_group() as tg:
            resolver.start(tg, reports)
            names = ["txt.fz.test.", "_sip._tcp.fz.test."]
            for i in range(300):
                name = names[i % 2]
                resolver.submit(
                    ForwardDnsQuery(
                        i, DnsTransport.UDP, with_id(query(name, "TXT" if i % 2 == 0 else "SRV"), i % 7)
                    )
                )
            got = await reports.wait(300)
            (upstream,) = resolver.upstreams.values()
            with anyio.fail_after(10):
                while len(upstream.sockets) > 1:  # the retired socket closes by itself
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        resolver.close()
    assert upstream.counters["sockets"] == 2 and upstream.counters["answered"] == 300
    by_id = {r.query_id: r for r in got if isinstance(r, DnsUpstreamResponse)}
    assert sorted(by_id) == list(range(300))
    for i, r in by_id.items():
        msg = dns.message.from_wire(r.message)
        assert msg.id == i % 7 and msg.rcode() == dns.rcode.NOERROR
        assert msg.question[0].name.to_text() == names[i % 2]


@pytest.mark.anyio
async def test_submitted_tcp_truncation_refusal_and_silence(ns: str, unbound: None) -> None:
    with silent_server(ns), inside(ns):
        resolver = Resolver([UNBOUND], timeout=0.5)
        assert await resolver.evaluate() == UNBOUND
        reports = Reports()
        async with anyio.create_task_group() as tg:
            resolver.start(tg, reports)
            resolver.submit(ForwardDnsQuery(1, DnsTransport.TCP, query("txt.fz.test.", "TXT")))
            resolver.submit(ForwardDnsQuery(2, DnsTransport.UDP, query("big.fz.test.", "TXT")))  # truncated
            await reports.wait(2)
            resolver.fastest = REFUSING
            resolver.submit(ForwardDnsQuery(3, DnsTransport.UDP, query("txt.fz.test.", "TXT")))
            await reports.wait(3)
            resolver.fastest = SILENT
            resolver.submit(ForwardDnsQuery(4, DnsTransport.UDP, query("txt.fz.test.", "TXT")))
            silent = resolver.upstreams[SILENT]
            with anyio.fail_after(5):
                while silent.counters["expired"] == 0:  # forgotten after the timeout, nothing reported
                    await anyio.sleep(0.05)
            resolver.fastest = None
            resolver.submit(ForwardDnsQuery(5, DnsTransport.UDP, query("txt.fz.test.", "TXT")))
            tg.cancel_scope.cancel()
        resolver.close()
    by_id = {r.query_id: r for r in reports.items}  # type: ignore[attr-defined]
    assert sorted(by_id) == [1, 2, 3, 5]
    assert isinstance(by_id[1], DnsUpstreamResponse)
    big = by_id[2]
    assert isinstance(big, DnsUpstreamResponse)
    msg = dns.message.from_wire(big.message)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == len(BIG_TXT) and msg.id == 0x1234
    assert isinstance(by_id[3], DnsUpstreamFailed) and "refused" in by_id[3].error
    assert by_id[5] == DnsUpstreamFailed(5, "no nameserver available")


@pytest.mark.anyio
async def test_forged_answers_are_ignored(ns: str) -> None:
    """A nameserver address that answers first with the right id for another question, then with an id
    that was never sent, then properly: only the proper answer counts."""
    forger = SocketAddr(ip_address("127.0.0.2"), 53)
    with inside(ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server:
        server.bind((str(forger.ip), 53))
        server.setblocking(False)
        resolver = Resolver([forger])
        resolver.fastest = forger
        reports = Reports()
        async with anyio.create_task_group() as tg:
            resolver.start(tg, reports)
            with inside(ns):
                resolver.submit(ForwardDnsQuery(9, DnsTransport.UDP, query("txt.fz.test.", "TXT")))
            await anyio.wait_readable(server)
            sent, peer = server.recvfrom(2000)
            real = dns.message.make_response(dns.message.from_wire(sent))
            other = dns.message.make_response(dns.message.from_wire(sent))
            other.question[0].name = dns.name.from_text("evil.fz.test.")
            server.sendto(other.to_wire(), peer)
            server.sendto(with_id(real.to_wire(), (real.id + 1) % 65536), peer)
            server.sendto(real.to_wire(), peer)
            got = await reports.wait(1)
            counters = resolver.upstreams[forger].counters
            tg.cancel_scope.cancel()
        resolver.close()
    assert len(got) == 1 and isinstance(got[0], DnsUpstreamResponse) and got[0].query_id == 9
    assert dns.message.from_wire(got[0].message).id == 0x1234  # the client's id is back
    assert counters["ignored"] == 2 and counters["answered"] == 1

"""``firezone-e2e demo`` (``make demo``'s real part): the whole system on real kernels, one readable report.

Builds the :class:`~e2e.topology.Topology` (portal, our relay and coturn, the real ``firezone-gateway``, three
client hosts, web and DNS hosts; a dual-stack underlay), grants the clients access through the dev portal's
admin API, then runs the checks of :mod:`e2e.checks` from ``client`` (IPv4 only, may reach the gateway
directly), from ``client2`` (IPv4 only, direct path cut in the router, so its tunnel runs over a relay) and
from ``client3`` (IPv6 only, reaching the gateway through relay2's IPv6 side while the others stay connected
over IPv4), prints what each showed, and tears everything down, also on failure, Ctrl-C or SIGTERM. Exit code
0 when every check passed, 1 otherwise, 2 when not run as root.

``firezone-e2e up`` builds the same topology and waits (Ctrl-C tears it down) for exploring by hand: it prints
the namespace names, e.g. ``ip netns exec <client> curl http://web.fz.test/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from e2e import checks
from e2e.topology import CIDR_ID, DNS_ID, WAIT, Topology, sigterm_as_interrupt, wait_for


def _say(text: str) -> None:
    print(text, flush=True)


def connect(topo: Topology, client: int) -> float:
    """Grant both resources to ``client`` and wait for its tunnel; seconds it took."""
    t0 = time.monotonic()
    for rid in (CIDR_ID, DNS_ID):
        r = topo.grant(client, rid)
        if not r.get("ok"):
            raise RuntimeError(f"the portal refused the grant: {r}")
    wait_for(f"client {client} to connect", lambda: topo.client_status(client).get("connected"), timeout=WAIT)
    return time.monotonic() - t0


def demo(topo: Topology) -> int:
    results: list[checks.Check] = []
    for client, label in (
        (0, "client (IPv4-only underlay, direct path allowed)"),
        (1, "client2 (IPv4-only underlay, direct path cut: over a relay)"),
        (2, "client3 (IPv6-only underlay, direct path and relay1 cut: over relay2's IPv6 side)"),
    ):
        took = connect(topo, client)
        _say(f"\n{label}: access granted through the dev portal, tunnel up in {took:.2f} s")
        for c in checks.all_checks(topo, client):
            results.append(c)
            _say(c.line())
    failed = [c for c in results if not c.ok]
    _say(f"\nreport: {len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="firezone-e2e", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("demo", "up"), nargs="?", default="demo")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work directory with every log")
    ap.add_argument("--no-coturn", action="store_true", help="relay2 is a second devio.relay, not coturn")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        _say("firezone-e2e: the real end-to-end demo needs root (network namespaces, TUN devices)")
        return 2
    with sigterm_as_interrupt():
        topo = Topology(keep_workdir=args.keep_logs, coturn=not args.no_coturn)
        try:
            relays = "relay1 (ours), relay2 (" + ("ours" if args.no_coturn else "coturn") + ")"
            _say(f"building the topology: portal, {relays}, gateway, client, client2, client3, web, dns")
            t0 = time.monotonic()
            with topo:
                _say(
                    f"  up in {time.monotonic() - t0:.1f} s (namespaces fze{topo.tag}-*, logs {topo.workdir})"
                )
                if args.command == "up":
                    for role, ns in sorted(topo.ns.items()):
                        _say(f"  {role:<8} {ns}")
                    for client in (0, 1, 2):
                        connect(topo, client)
                    _say("the three clients granted and connected; Ctrl-C tears everything down")
                    while True:
                        time.sleep(3600)
                code = demo(topo)
                if code != 0:
                    for name in ("gateway", "client", "client2", "client3"):
                        _say(f"--- last lines of the {name} log ---\n{topo.procs[name].text()[-1500:]}")
            _say("torn down: processes stopped, namespaces deleted")
            return code
        except KeyboardInterrupt:
            _say("interrupted: torn down")
            return 130
        except (RuntimeError, AssertionError) as e:
            _say(f"firezone-e2e: {e}")
            return 1


if __name__ == "__main__":
    sys.exit(main())

"""``firezone-sim``: run a simulated scenario.

- ``firezone-sim run --seed N [--trace FILE] [--pcap FILE] [--duration SECONDS] [--scenario NAME]``: run
  a scenario (``echo``, the default, or ``wireguard``: ICMP echo through a WireGuard tunnel between two
  simulated hosts; or a connectivity scenario, ``direct``, ``relay-only``, ``relay-lost`` or
  ``credentials``: gateway and client nodes with TURN relays; or ``gateway``: a simulated client using a
  CIDR and a DNS resource through the whole gateway, see :mod:`sim.gateway_scenario`), write the trace
  (JSON lines) and a pcap if asked, and print a short summary.
- ``firezone-sim run --scenario gateway --clients N [--relays R] [--duration SECONDS]``: the scale
  scenario (:mod:`sim.scale`): N clients, each pinging the CIDR resource once a second and using the DNS
  resource; prints the simulated time per real second of the measured stretch (default 60 s).
- ``firezone-sim sweep --seeds A..B [-n WORKERS] [--steps K]``: run the stateful test's seeded programs
  ``A`` to ``B`` over the cores (pytest-xdist) and print each failing seed with its replay command
  (:mod:`sim.sweep`).
- ``firezone-sim replay FILE | --seed N [--steps K] [--trace F] [--pcap F] [--progress]``: replay a program
  of the stateful test (a saved failure, or one drawn from a seed) and print its summary table.
- ``firezone-sim demo [--seed N]``: run the echo scenario, then the gateway scenario, and print a
  play-by-play of each as it happens.

The same seed gives the same trace and pcap, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import IO, BinaryIO

from gateway_core.clock import Instant, fmt, millis, secs
from sim.contract import ContractViolation
from sim.gateway_scenario import (
    GatewayScenario,
    build_gateway_scenario,
    narrate,
    run_gateway_scenario,
    scenario_summary,
)
from sim.hosts.connectivity import CONNECTIVITY_KINDS, connectivity_summary, run_connectivity
from sim.hosts.wireguard import WireGuardScenario, build_wireguard_world, wireguard_summary
from sim.pcap import PcapWriter
from sim.scenarios import EchoScenario, build_echo_world, play_by_play, summary
from sim.trace import Record, Trace
from sim.world import World

DEMO = EchoScenario(duration=secs(6), interval=millis(500), partition_at=secs(2), heal_at=secs(4))
"""``demo``'s scenario: slower probes than ``run`` so the play-by-play stays readable (about 100 lines),
long enough to see the partition start and heal."""


def parse_duration(text: str) -> int:
    """Seconds as a decimal string (``"2.5"``) to integer nanoseconds, without going through a float."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from exc
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    ns = value * 1_000_000_000
    if ns < 0 or ns != ns.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a non-negative duration in ns precision: {text!r}")
    return int(ns)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_seeds(text: str) -> range:
    """``"A..B"`` (inclusive) or a single seed ``"A"`` as a range of seeds."""
    first, sep, last = text.partition("..")
    try:
        a = int(first)
        b = int(last) if sep else a
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a seed range A..B: {text!r}") from exc
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"not a seed range A..B with 0 <= A <= B: {text!r}")
    return range(a, b + 1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firezone-sim", description="Deterministic simulator of the Firezone gateway world."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the echo scenario and print a summary")
    run.add_argument("--seed", type=int, required=True, help="the run's seed (same seed, same run)")
    run.add_argument("--trace", metavar="FILE", help="write the trace as JSON lines to FILE")
    run.add_argument("--pcap", metavar="FILE", help="write every delivered packet to FILE (pcap, raw IP)")
    run.add_argument(
        "--scenario",
        choices=("echo", "wireguard", "gateway", *CONNECTIVITY_KINDS),
        default="echo",
        help="which world to run",
    )
    run.add_argument(
        "--duration",
        type=parse_duration,
        default=None,
        metavar="SECONDS",
        help="simulated seconds (default 10; with --clients, the measured stretch, default 60)",
    )
    run.add_argument(
        "--clients",
        type=_positive,
        default=None,
        metavar="N",
        help="with --scenario gateway: the scale scenario with N clients (sim.scale)",
    )
    run.add_argument(
        "--relays", type=_positive, default=2, metavar="R", help="relays of the scale scenario (default 2)"
    )
    sweep = sub.add_parser(
        "sweep", help="run seeded stateful programs over the cores and print the failing seeds"
    )
    sweep.add_argument("--seeds", type=parse_seeds, required=True, metavar="A..B", help="inclusive range")
    sweep.add_argument("--steps", type=_positive, default=15, help="steps per program (default 15)")
    sweep.add_argument(
        "-n", "--workers", default="auto", help="pytest-xdist workers (default auto: one per core)"
    )
    rep = sub.add_parser(
        "replay", help="replay a stateful-test program (a saved failure, or one drawn from a seed)"
    )
    rep.add_argument("program", nargs="?", help="a program file written by the stateful test")
    rep.add_argument("--seed", type=int, help="draw the program from this seed instead")
    rep.add_argument("--steps", type=int, default=15, help="steps of a seeded program (default 15)")
    rep.add_argument("--trace", metavar="FILE", help="write the trace as JSON lines to FILE")
    rep.add_argument("--pcap", metavar="FILE", help="write every delivered packet to FILE")
    rep.add_argument("--progress", action="store_true", help="print one line per step")
    demo = sub.add_parser("demo", help="run the echo scenario and print what happens")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--duration", type=parse_duration, default=None, metavar="SECONDS")
    return p


def _run(cfg: EchoScenario, seed: int, trace: Trace, pcap: PcapWriter | None) -> World:
    world = build_echo_world(World(seed, trace=trace, pcap=pcap), cfg)
    world.run_until(Instant(cfg.duration))
    return world


def _run_wireguard(duration: int | None, seed: int, trace: Trace, pcap: PcapWriter | None) -> World:
    cfg = WireGuardScenario() if duration is None else WireGuardScenario(duration=duration)
    world = build_wireguard_world(World(seed, trace=trace, pcap=pcap), cfg)
    world.run_until(Instant(cfg.duration))
    return world


def _demo_gateway(seed: int) -> None:
    cfg = GatewayScenario()
    print(
        f"\nGateway scenario, seed {seed}, {fmt(cfg.duration)} of virtual time:\n"
        "  a stub portal, two TURN relays, the gateway, one client, resources 'web' (CIDR) and 'app'\n"
        "  (behind the DNS resource **.corp.test) and an upstream DNS server. The client pings web\n"
        f"  every {fmt(cfg.interval)}, tries allowed and filtered ports, resolves app.corp.test to proxy\n"
        "  IPs and talks to it through the gateway's NAT, asks SRV/TXT through the gateway;\n"
        f"  web is revoked at {fmt(cfg.revoke_at)}.\n"
        "Each line: virtual time, who, what (*** = a scenario step; 'web <-' = a packet at a resource).\n"
    )
    trace = Trace()
    world = World(seed, trace=trace)
    gw = build_gateway_scenario(world, cfg)
    trace.listeners.append(narrate(gw, print))
    world.run_until(Instant(cfg.duration))
    print()
    print(scenario_summary(gw))


def _replay(args: argparse.Namespace) -> int:
    """``firezone-sim replay``: run a stateful program, print progress and the summary table."""
    from sim.stateful import Harness, InvariantError, Program, run_program, run_seeded

    if (args.program is None) == (args.seed is None):
        print("replay: give a program file or --seed N", file=sys.stderr)
        return 2

    def progress(i: int, n: int, h: Harness) -> None:
        if args.progress:
            print(f"[{i}/{n}] {fmt(h.world.now)} virtual, {h.checks} checks", flush=True)

    with ExitStack() as stack:
        sink: IO[str] | None = None
        if args.trace:
            sink = stack.enter_context(open(args.trace, "w", encoding="ascii", newline="\n"))
        pcap = None
        if args.pcap:
            pcap = PcapWriter(stack.enter_context(open(args.pcap, "wb")))
        trace = Trace(sink)
        try:
            if args.program is not None:
                with open(args.program, encoding="ascii") as f:
                    program = Program.loads(f.read())
                h = run_program(program, trace=trace, pcap=pcap, progress=progress)
            else:
                h = run_seeded(args.seed, args.steps, trace=trace, pcap=pcap, progress=progress)
        except InvariantError as exc:
            print(f"invariant failed: {exc}", file=sys.stderr)
            return 1
    print(summary_table(h.summary()))
    return 0


def _run_scale(args: argparse.Namespace) -> int:
    """``firezone-sim run --scenario gateway --clients N``: the scale scenario and its speed."""
    from sim.scale import run_scale, scale_summary

    if args.scenario != "gateway":
        print("run: --clients needs --scenario gateway", file=sys.stderr)
        return 2
    duration = secs(60) if args.duration is None else args.duration
    with ExitStack() as stack:
        sink: IO[str] | None = None
        if args.trace:
            sink = stack.enter_context(open(args.trace, "w", encoding="ascii", newline="\n"))
        pcap = None
        if args.pcap:
            pcap = PcapWriter(stack.enter_context(open(args.pcap, "wb")))
        world = World(args.seed, trace=Trace(sink), pcap=pcap)
        _, result = run_scale(args.seed, args.clients, duration, args.relays, world)
    st = world.stats.counters
    print(
        f"seed {args.seed}: {int(world.now) // 1_000_000} ms simulated; network: sent {st['sent']},"
        f" delivered {st['delivered']}, dropped {sum(v for k, v in st.items() if k.startswith('drop.'))}"
    )
    print(scale_summary(result))
    return 0


def summary_table(rows: dict[str, int]) -> str:
    """A two-column table (steps, packets, drops by reason, invariants checked)."""
    width = max((len(k) for k in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:>10}" for k, v in rows.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "replay":
            return _replay(args)
        if args.command == "sweep":
            from sim.sweep import sweep

            return sweep(args.seeds, args.steps, args.workers)
        if args.command == "run" and args.clients is not None:
            return _run_scale(args)
        if args.command == "run":
            cfg = EchoScenario() if args.duration is None else EchoScenario(duration=args.duration)
            with ExitStack() as stack:
                sink: IO[str] | None = None
                if args.trace:
                    sink = stack.enter_context(open(args.trace, "w", encoding="ascii", newline="\n"))
                pcap = None
                if args.pcap:
                    stream: BinaryIO = stack.enter_context(open(args.pcap, "wb"))
                    pcap = PcapWriter(stream)
                gateway_world = None
                if args.scenario == "wireguard":
                    world = _run_wireguard(args.duration, args.seed, Trace(sink), pcap)
                elif args.scenario == "gateway":
                    gateway_world = run_gateway_scenario(
                        World(args.seed, trace=Trace(sink), pcap=pcap), args.duration
                    )
                    world = gateway_world.world
                elif args.scenario in CONNECTIVITY_KINDS:
                    world = run_connectivity(
                        World(args.seed, trace=Trace(sink), pcap=pcap), args.scenario, args.duration
                    )
                else:
                    world = _run(cfg, args.seed, Trace(sink), pcap)
            print(summary(world))
            if args.scenario == "wireguard":
                print(wireguard_summary(world))
            if args.scenario in CONNECTIVITY_KINDS:
                print(connectivity_summary(world))
            if gateway_world is not None:
                print(scenario_summary(gateway_world))
            return 0
        cfg = DEMO if args.duration is None else replace(DEMO, duration=args.duration)
        print(
            f"Echo scenario, seed {args.seed}, {fmt(cfg.duration)} of virtual time:\n"
            "  server (dual stack) and carol (10% loss) echo UDP and ICMP;\n"
            f"  alice (IPv4, 5% loss, 3% duplication) and bob (IPv6) probe them every {fmt(cfg.interval)};\n"
            f"  alice is cut off from server at {fmt(cfg.partition_at)}; it heals at {fmt(cfg.heal_at)}.\n"
            "Each line: virtual time, sender -> receiver, what, addresses, size and time in flight.\n"
        )

        def show(rec: Record) -> None:
            line = play_by_play(rec)
            if line is not None:
                print(line)

        trace = Trace()
        trace.listeners.append(show)
        world = _run(cfg, args.seed, trace, None)
        print()
        print(summary(world))
        _demo_gateway(args.seed)
        return 0
    except ContractViolation as exc:
        print(f"contract violation: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

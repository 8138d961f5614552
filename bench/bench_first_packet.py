"""Time to first packet in the simulator: from the portal's ``authorize_flow`` to the first packet at the
resource, on a direct and on a relayed path, at 10, 25 and 50 ms links (:mod:`sim.first_packet`).

Virtual time, so every figure is exact and the same on every run and machine (no repetitions, no load
to report). Each figure is given in round trips of its path after the client's fixed 30 ms portal hop
(the reference the ratio is taken against, measured in the same run: 4 link latencies direct, 8 through
the relay), with the raw milliseconds and the count including the hop. The last line is the worst over
the three latencies, checked against the bounds of decision 0130. ``python -m bench bench_first_packet``.
"""

from __future__ import annotations

from sim.first_packet import DIRECT_BOUND, LATENCIES_MS, RELAYED_BOUND, measure

ISSUE_DIRECT_TARGET = 3.0
"""What was asked for the direct path; unreachable for a client that sends its WireGuard initiation
when it nominates (Firezone's), see :mod:`sim.first_packet` and decision 0130."""


def main() -> None:
    worst = {False: 0.0, True: 0.0}
    for latency in LATENCIES_MS:
        for relayed in (False, True):
            m = measure(latency, relayed)
            worst[relayed] = max(worst[relayed], m.rtts)
            unit = "relayed RTT" if relayed else "RTT"
            print(
                f"{latency:3d} ms links  {'relayed' if relayed else 'direct ':7s}  {m.elapsed / 1e6:7.1f} ms"
                f"  = {m.rtts:.2f} {unit} + 30 ms  ({m.rtts_with_signal:.2f} {unit} with the portal hop,"
                f" {unit} = {m.unit / 1e6:.0f} ms)"
            )
    direct_ok = worst[False] <= DIRECT_BOUND
    relayed_ok = worst[True] <= RELAYED_BOUND
    print(
        f"bounds (decision 0130): direct <= {DIRECT_BOUND:.2f} RTT {'met' if direct_ok else 'NOT met'},"
        f" relayed <= {RELAYED_BOUND:.2f} relayed RTT {'met' if relayed_ok else 'NOT met'};"
        f" the asked direct <= {ISSUE_DIRECT_TARGET:.2f} RTT"
        f" {'met' if worst[False] <= ISSUE_DIRECT_TARGET else 'NOT met (needs a client change)'}"
    )
    print(f"first packet: direct {worst[False]:.2f} RTT, relayed {worst[True]:.2f} RTT")


if __name__ == "__main__":
    main()

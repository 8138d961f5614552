"""The scale scenario (sim/scale.py) and ``firezone-sim run --scenario gateway --clients N``."""

from __future__ import annotations

import pytest

from gateway_core.clock import secs
from sim.cli import main
from sim.scale import OverBudget, run_scale


def test_every_client_pings_and_uses_the_dns_resource() -> None:
    gw, r = run_scale(5, 3, secs(4))
    assert r.clients == 3 and r.simulated_ns == secs(4)
    assert r.pings == 12  # 3 clients x 4 s, once a second each
    assert r.replies >= r.pings - 3  # at most each client's last ping still in flight at the end
    assert r.proxy_pings == 3 and r.proxy_replies == 3  # resolved and pinged once each (every 30 s)
    assert all(c.proxy_ips("app.corp.test") for c in gw.clients)
    assert r.speed > 0 and r.cpu_speed > 0 and r.delivered > 0


def test_the_same_seed_gives_the_same_run() -> None:
    a = run_scale(9, 2, secs(3))[1]
    b = run_scale(9, 2, secs(3))[1]
    fields = ("pings", "replies", "proxy_pings", "proxy_replies", "delivered", "setup_simulated_ns")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_a_real_time_budget_stops_the_run_where_it_got() -> None:
    with pytest.raises(OverBudget, match="clients connected"):
        run_scale(1, 2, secs(2), budget_s=0.0)


def test_cli_runs_the_scale_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--scenario", "gateway", "--clients", "2", "--duration", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "gateway scale scenario: 2 clients, 2 relays" in out
    assert "simulated seconds per real second" in out
    assert "pings to 172.20.0.10: 6 sent" in out


def test_cli_refuses_clients_without_the_gateway_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--clients", "2", "--seed", "1"]) == 2
    assert "--clients needs --scenario gateway" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--scenario", "gateway", "--clients", "0", "--seed", "1"])

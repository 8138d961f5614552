"""The design pages show the current transition tables (diagrams generated from the code)."""

from __future__ import annotations

from pathlib import Path

from gateway_core.ice.agent import transition_diagram as ice_diagram
from gateway_core.node.connection import transition_diagram as connection_diagram
from gateway_core.turn.types import transition_diagram as turn_diagram

DOCS = Path(__file__).resolve().parents[2] / "docs" / "design"


def test_turn_page_has_current_diagram() -> None:
    assert f"```mermaid\n{turn_diagram()}\n```" in (DOCS / "turn-allocation.md").read_text()


def test_ice_page_has_current_diagrams() -> None:
    page = (DOCS / "ice-agent.md").read_text()
    assert f"```mermaid\n{ice_diagram()}\n```" in page
    assert f"```mermaid\n{connection_diagram()}\n```" in page

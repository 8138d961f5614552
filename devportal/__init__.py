"""A development Firezone portal: the pure logic shared by the simulator's stub portal and the real
``firezone-dev-portal`` server (``devio.portal``).

It imports ``gateway_core`` only (never ``sim``, ``gateway_io`` nor ``devio``, and nothing doing IO), so both
sides can use it without breaking the one-direction import rule (checked by
``tests/test_architecture.py``).
"""

from devportal.config import ConfigError, PortalConfig, load_config
from devportal.phoenix_server import PhoenixSocket, Reply
from devportal.portal import DevPortal, GatewayRecord, Refusal

__all__ = [
    "ConfigError",
    "DevPortal",
    "GatewayRecord",
    "PhoenixSocket",
    "PortalConfig",
    "Refusal",
    "Reply",
    "load_config",
]

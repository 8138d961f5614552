"""Simulated components and hosts that populate the world (echo hosts now; later client, relay, portal)."""

"""The connectivity node: allocations, ICE agents and WireGuard tunnels behind one socket per family."""

"""TURN client: relay credentials (:mod:`.credentials`) and the allocation machine (:mod:`.allocation`)."""

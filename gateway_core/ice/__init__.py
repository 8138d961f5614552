"""ICE for the gateway's controlled role: candidates (:mod:`.candidate`) and the agent (:mod:`.agent`)."""

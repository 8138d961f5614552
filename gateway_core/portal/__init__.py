"""The portal connection: Phoenix framing, the channel machine, typed messages, login URL."""

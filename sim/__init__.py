"""A deterministic simulator: virtual clock and network driving sans-IO components."""

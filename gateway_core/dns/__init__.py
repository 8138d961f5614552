"""DNS in the core: domain patterns (``patterns``), the layer-4 DNS servers' commands, inputs and
bind-retry policy (``servers``), and a quick check of query wire bytes (``query_check``)."""

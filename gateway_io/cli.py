"""``firezone-gateway``: the daemon's entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway_io.config import ConfigError, load


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as e:
        print(f"firezone-gateway: {e}", file=sys.stderr)
        return 2
    print(
        f"firezone-gateway: configuration ok (id={config.firezone_id[:12]}..., portal={config.api_url}); "
        "this build cannot connect to the portal yet",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

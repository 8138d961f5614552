"""A boringtun WireGuard responder (PyPI ``mitmproxy-wireguard``) that echoes TCP and UDP (test helper).

Usage: ``python mitm_wg_echo.py HOST PORT PRIVATE_KEY_B64 PEER_PUBLIC_B64 SECONDS``. Prints ``ready`` once
listening; UDP datagrams are sent back from the address they were sent to, TCP streams are echoed.
"""

from __future__ import annotations

import asyncio
import sys

import mitmproxy_wireguard as wg


async def main() -> None:
    host, port, key, peer, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        sys.argv[4],
        float(sys.argv[5]),
    )
    server: wg.Server | None = None

    async def handle(stream: wg.TcpStream) -> None:
        while data := await stream.read(4096):
            stream.write(data)
            await stream.drain()
        stream.close()

    def datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        assert server is not None
        server.send_datagram(data, dst, src)

    server = await wg.start_server(host, port, key, [peer], handle, datagram)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())

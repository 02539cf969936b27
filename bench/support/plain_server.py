"""The baseline for bench/gpu_scrape.py: a plain aiohttp server that serves fixed bytes.

Same HTTP stack as the exporters (aiohttp), no collection thread: `python plain_server.py PORT
BODY_FILE [ENCODING]` answers every GET with the file's bytes (and `Content-Encoding: ENCODING`
when given), so the exporter's scrape latency can be compared with serving the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port, body = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    encoding = sys.argv[3] if len(sys.argv) > 3 else ""
    headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    if encoding:
        headers["Content-Encoding"] = encoding

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()

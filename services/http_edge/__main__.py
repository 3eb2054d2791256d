"""`python -P -m services.http_edge`: the HTTP edge (console script `voice-http-edge`)."""

from __future__ import annotations

import asyncio
import sys

from services.http_edge.app import main


def run() -> None:
    asyncio.run(main(sys.argv[1:]))


if __name__ == "__main__":
    run()

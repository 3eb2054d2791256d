"""Entry point: `voice-tts-gateway [flags]` or `python -m services.tts_gateway [flags]`; every flag also reads
GATEWAY_<FLAG> from the environment."""

from __future__ import annotations

import asyncio
import sys

from services.tts_gateway.app import main


def run() -> None:
    asyncio.run(main(sys.argv[1:]))


if __name__ == "__main__":
    run()

"""Entry point: python -m services.tts_gateway [flags]; every flag also reads GATEWAY_<FLAG> from the environment."""

from __future__ import annotations

import asyncio
import sys

from services.tts_gateway.app import main

if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

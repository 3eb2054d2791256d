"""The CosyVoice2 runtime's WebSocket `/stream` (its JSON `POST /tts` shares the seed's `/tts`: routers/seed.py).
The protocol and the session references are in bistream.py."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from services.http_edge.bistream import STREAM_ROUTE, BistreamDep, StreamSession
from services.http_edge.dependencies import SettingsDep
from services.http_edge.sockets import serve_socket

router = APIRouter(tags=["WebSocket"])


@router.websocket(STREAM_ROUTE)
async def stream(websocket: WebSocket, settings: SettingsDep, bistream: BistreamDep) -> None:
    async def session(rid: str) -> int:
        return await StreamSession(bistream, websocket, rid).run()

    await serve_socket(websocket, STREAM_ROUTE, settings, session)

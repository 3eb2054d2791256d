"""WebSocket `/v1/talk`: the live voice loop (protocol and session in talk.py)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from services.http_edge.dependencies import CallsDep, SettingsDep
from services.http_edge.sockets import serve_socket
from services.http_edge.talk import TALK_ROUTE, talk_session

router = APIRouter(tags=["WebSocket"])


@router.websocket(TALK_ROUTE)
async def talk(websocket: WebSocket, settings: SettingsDep, calls: CallsDep) -> None:
    async def session(rid: str) -> int:
        return await talk_session(websocket, settings, calls, rid)

    await serve_socket(websocket, TALK_ROUTE, settings, session)

"""The web page: `GET /` (static/index.html); its files are mounted at /static by `app.create_app`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.http_edge.dependencies import SettingsDep

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(settings: SettingsDep) -> FileResponse:
    return FileResponse(settings.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

"""The seed API's form bodies (multipart or url-encoded): reading them within the edge's limits, and their fields."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.http_edge.encode import FORMATS, supported_formats
from services.http_edge.errors import invalid


@dataclass
class FormFields:
    """The fields of /synthesize, /synthesize/stream and the form /tts."""

    text: str
    voice: str
    conversion_model: str | None
    pitch_shift: float | None
    reference: bytes | None
    reference_text: str
    response_format: str


def text_field(form: Any, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise invalid(f"{name} must be a plain form field, not a file", name)
    if value is None or value == "":
        if required:
            raise invalid(f"{name} is required", name)
        return None
    return str(value)


def float_field(form: Any, name: str) -> float | None:
    text = text_field(form, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"{name} must be a number, got {text[:40]!r}", name) from None
    if not math.isfinite(value):
        raise invalid(f"{name} must be a finite number", name)
    return value


async def file_field(form: Any, name: str) -> bytes | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, UploadFile):
        raise invalid(f"{name} must be a file upload (multipart/form-data)", name)
    data = await value.read()
    return data or None


async def read_form(request: Request, max_body: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise invalid("send the fields as multipart/form-data (or application/x-www-form-urlencoded)")
    try:
        return await request.form(max_files=4, max_fields=32, max_part_size=max_body)
    except StarletteHTTPException:
        raise
    except Exception as error:  # python-multipart's parse errors: a malformed body is the client's error
        raise invalid(f"the form body could not be parsed: {error}") from error


async def synthesis_fields(request: Request, max_body: int, *, default_format: str) -> FormFields:
    form = await read_form(request, max_body)
    response_format = text_field(form, "response_format") or default_format
    if response_format not in FORMATS:
        raise invalid(f"response_format must be one of {supported_formats()}", "response_format")
    return FormFields(
        text=text_field(form, "text", required=True) or "",
        voice=text_field(form, "voice", required=True) or "",
        conversion_model=text_field(form, "conversion_model"),
        pitch_shift=float_field(form, "pitch_shift"),
        reference=await file_field(form, "reference"),
        reference_text=text_field(form, "reference_text") or "",
        response_format=response_format,
    )

"""What routes get from FastAPI's dependency injection: the settings, the upstream gRPC clients (opened once per
app in its lifespan, kept on `app.state`), the request id, and the per-app caches (voice listing, session
references). Routes declare them as parameters (`settings: SettingsDep`, `calls: CallsDep`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends
from starlette.requests import HTTPConnection

from services.http_edge.context import bearer_token, request_id_of
from services.http_edge.settings import Settings
from services.http_edge.upstream import Metadata, Upstreams
from voice.v1 import recognition_pb2_grpc, tts_gateway_pb2_grpc, voice_conversion_pb2_grpc


@dataclass(frozen=True)
class Calls:
    """The upstreams as one connection uses them: stubs, and the metadata of its calls (request id, and the token:
    the channel's own, else --upstream-token, else the client's bearer token)."""

    up: Upstreams
    client_bearer: str | None

    @property
    def gateway(self) -> tts_gateway_pb2_grpc.TtsGatewayServiceStub:
        return self.up.gateway

    @property
    def recognition(self) -> recognition_pb2_grpc.RecognitionServiceStub:
        return self.up.recognition

    @property
    def conversion(self) -> voice_conversion_pb2_grpc.VoiceConversionServiceStub:
        return self.up.conversion

    @property
    def unary_timeout_s(self) -> float:
        return self.up.unary_timeout_s

    def gateway_md(self, request_id: str) -> Metadata:
        return self.up.metadata(self.up.gateway_channel, request_id, self.client_bearer)

    def rvc_md(self, request_id: str) -> Metadata:
        return self.up.metadata(self.up.rvc_channel, request_id, self.client_bearer)


def get_settings(conn: HTTPConnection) -> Settings:
    return cast(Settings, conn.app.state.settings)


def get_upstreams(conn: HTTPConnection) -> Upstreams:
    return cast(Upstreams, conn.app.state.upstreams)


def get_calls(conn: HTTPConnection) -> Calls:
    return Calls(get_upstreams(conn), bearer_token(conn.headers))


def get_request_id(conn: HTTPConnection) -> str:
    return request_id_of(conn)


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallsDep = Annotated[Calls, Depends(get_calls)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
UpstreamsDep = Annotated[Upstreams, Depends(get_upstreams)]

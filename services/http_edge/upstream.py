"""The edge's two gRPC upstreams (gateway, conversion service): channels, stubs, and the metadata every call carries."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import UPSTREAM_CHANNEL_OPTIONS, UpstreamChannel, credentials_from_args, open_channel
from services.common.request_id import REQUEST_ID_METADATA_KEY
from voice.v1 import (
    recognition_pb2_grpc,
    tts_gateway_pb2,
    tts_gateway_pb2_grpc,
    voice_conversion_pb2,
    voice_conversion_pb2_grpc,
)

log = logging.getLogger(__name__)

GATEWAY_SERVICE = tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].full_name
CONVERSION_SERVICE = voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"].full_name


Metadata = tuple[tuple[str, str], ...]


@dataclass
class Upstreams:
    """Channels opened inside the running event loop (grpc.aio binds a channel to the loop that made it)."""

    gateway_channel: UpstreamChannel
    rvc_channel: UpstreamChannel
    upstream_token: str | None
    unary_timeout_s: float

    @classmethod
    def open(cls, args: argparse.Namespace) -> Upstreams:
        return cls(
            open_channel("gateway", args.gateway_url, UPSTREAM_CHANNEL_OPTIONS, credentials_from_args(args, "gateway")),
            open_channel(
                "voice_conversion", args.rvc_url, UPSTREAM_CHANNEL_OPTIONS, credentials_from_args(args, "rvc")
            ),
            args.upstream_token or None,
            args.upstream_timeout,
        )

    @property
    def gateway(self) -> tts_gateway_pb2_grpc.TtsGatewayServiceStub:
        return tts_gateway_pb2_grpc.TtsGatewayServiceStub(self.gateway_channel.channel)

    @property
    def recognition(self) -> recognition_pb2_grpc.RecognitionServiceStub:
        """RecognitionService, served by the gateway process on its own port."""
        return recognition_pb2_grpc.RecognitionServiceStub(self.gateway_channel.channel)

    @property
    def conversion(self) -> voice_conversion_pb2_grpc.VoiceConversionServiceStub:
        return voice_conversion_pb2_grpc.VoiceConversionServiceStub(self.rvc_channel.channel)

    def metadata(self, upstream: UpstreamChannel, request_id: str, client_bearer: str | None) -> Metadata:
        """Request id, plus a token: the channel's own (--gateway-auth-token / --rvc-auth-token), else
        --upstream-token, else the bearer token the HTTP client sent (so a gateway's own auth can decide)."""
        entries: list[tuple[str, str]] = [(REQUEST_ID_METADATA_KEY, request_id)]
        if upstream.credentials.token:
            entries += upstream.call_metadata  # empty on TLS channels: the call credentials carry it there
        elif self.upstream_token:
            entries.append(("authorization", f"Bearer {self.upstream_token}"))
        elif client_bearer:
            entries.append(("authorization", f"Bearer {client_bearer}"))
        return tuple(entries)

    async def health(self, upstream: UpstreamChannel, service: str, timeout_s: float = 2.0) -> str:
        """grpc.health status name of `service` on `upstream`, or UNREACHABLE when the check itself failed."""
        stub = health_pb2_grpc.HealthStub(upstream.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            log.debug("health check of %s failed: %s", upstream.label, error.code())
            return "UNREACHABLE"
        except asyncio.CancelledError:
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self.gateway_channel.channel.close()
        await self.rvc_channel.channel.close()

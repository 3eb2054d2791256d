"""Background probe loop: upstream health for GetStatus, metrics, per-voice availability and grpc.health.

A voice is available while every upstream it needs answers: Triton for all, the conversion service for a voice with
a default conversion. The gateway service reports SERVING while at least one voice is available (a conversion
outage leaves the plain voices in rotation) and NOT_SERVING only when none is. Everything flips back when the probe
succeeds again, without a restart. The voice catalogue is (re)resolved from Triton whenever it is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.errors import ServiceError
from services.tts_gateway.metrics import UPSTREAM_UP
from services.tts_gateway.rvc_client import UPSTREAM_NAME as RVC_NAME
from services.tts_gateway.upstream_protocols import ConversionUpstream, SpeechUpstream
from services.tts_gateway.voices import Voice, VoiceCatalog, VoiceConfigError
from voice.v1 import tts_gateway_pb2

log = logging.getLogger(__name__)
TRITON_NAME = "triton"


@dataclass
class UpstreamState:
    name: str
    target: str
    serving: bool = False
    version: str = ""
    last_error: str = "not probed yet"

    def to_proto(self) -> tts_gateway_pb2.UpstreamStatus:
        return tts_gateway_pb2.UpstreamStatus(
            name=self.name, target=self.target, serving=self.serving, version=self.version, last_error=self.last_error
        )


class UpstreamMonitor:
    def __init__(
        self,
        triton: SpeechUpstream,
        rvc: ConversionUpstream,
        catalog: VoiceCatalog,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float = 0.5,
    ) -> None:
        self.triton = triton
        self.rvc = rvc
        self.catalog = catalog
        self._set_serving = set_serving
        self.interval_s = interval_s
        self.states = {
            TRITON_NAME: UpstreamState(TRITON_NAME, triton.url),
            RVC_NAME: UpstreamState(RVC_NAME, rvc.url),
        }
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self.catalog_error = ""

    async def _probe(self, state: UpstreamState, probe: Callable[[], Awaitable[str]]) -> None:
        try:
            state.version = await asyncio.wait_for(probe(), timeout=3.0)
        except (ServiceError, TimeoutError, OSError) as exc:
            if state.serving:
                log.warning("%s became unreachable: %s", state.name, exc)
            state.serving = False
            state.last_error = getattr(exc, "message", "") or str(exc) or type(exc).__name__
        else:
            if not state.serving:
                log.info("%s is reachable (version %s)", state.name, state.version)
            state.serving = True
            state.last_error = ""
        UPSTREAM_UP.labels(state.name).set(1 if state.serving else 0)

    async def probe_once(self) -> None:
        await asyncio.gather(
            self._probe(self.states[TRITON_NAME], self.triton.probe),
            self._probe(self.states[RVC_NAME], self.rvc.probe),
        )
        if self.states[TRITON_NAME].serving and not self.catalog.resolved:
            try:
                await self.catalog.resolve(self.triton)
                self.catalog_error = ""
            except (ServiceError, VoiceConfigError, ValueError) as exc:
                self.catalog_error = getattr(exc, "message", "") or str(exc)
                log.error("cannot resolve voices from Triton: %s", self.catalog_error)
        serving = self.catalog.resolved and any(
            not self.unavailable_reason(voice, converted=voice.spec.conversion is not None)
            for voice in self.catalog.voices.values()
        )
        if serving != self._serving:
            self._serving = serving
            await self._set_serving(serving)

    def unavailable_reason(self, voice: Voice, *, converted: bool) -> str:
        """Why `voice` cannot be served now (empty when it can); `converted`: the request goes through conversion."""
        triton = self.states[TRITON_NAME]
        if not triton.serving:
            return f"Triton at {triton.target} is unreachable ({triton.last_error})"
        rvc = self.states[RVC_NAME]
        if converted and not rvc.serving:
            return (
                f"its voice conversion service at {rvc.target} is unreachable ({rvc.last_error}); "
                "set disable_conversion to hear the unconverted voice"
            )
        return ""

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a probe does
                log.exception("upstream probe failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="upstream-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""Two real gateway processes sharing one real PostgreSQL database (`--saved-voices-database`), Spark-TTS (tiny
checkpoint) on the session's real Triton: what one replica saves, the other serves; deletes, name races and quotas hold
across them; a lost database is reported and caught up with."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.tts_gateway.app import SAVED_VOICES_HEALTH_NAME
from services.tts_gateway.saved_voices_pg import database_target
from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.postgres import DUMMY_PASSWORD, PostgresServer
from tests.fixtures.spark import start_spark_gateway
from tests.fixtures.triton_server import TritonServer
from tests.spark.helpers import speech_like
from tests.spark.test_saved_voices_gateway import TEXT, TRANSCRIPT, create_request, pcm_bytes, synthesize, wav_input
from voice.v1 import tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

Stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub
RPC_TIMEOUT_S = 180.0


class Replica:
    def __init__(self, process: GatewayProcess) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(process.address)
        self.stub = Stub(self.channel)

    def create(self, name: str, seed: int = 0, transcript: str = TRANSCRIPT) -> tts_gateway_pb2.Voice:
        reference = wav_input(speech_like(2.0, seed=seed))
        request = create_request(name, reference, transcript)
        return self.stub.CreateVoice(request, timeout=RPC_TIMEOUT_S).voice

    def status(self) -> tts_gateway_pb2.TtsGatewayServiceGetStatusResponse:
        return self.stub.GetStatus(tts_gateway_pb2.TtsGatewayServiceGetStatusRequest(), timeout=30)

    def store_status(self) -> tts_gateway_pb2.UpstreamStatus:
        (store,) = [u for u in self.status().upstreams if u.name == "saved_voices"]
        return store

    def store_health(self) -> int:
        request = health_pb2.HealthCheckRequest(service=SAVED_VOICES_HEALTH_NAME)
        return health_pb2_grpc.HealthStub(self.channel).Check(request, timeout=10).status


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def usable(replica: Replica, name: str) -> bool:
    try:
        replica.stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name=name), timeout=10)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            return False
        raise
    return True


@pytest.fixture
def start_replicas(
    triton_server: TritonServer, rvc_service: Any, tmp_path: Path
) -> Iterator[Callable[..., list[Replica]]]:
    """start(url, count, *flags): `count` gateways on the database at `url`; stopped after the test."""
    started: list[Replica] = []

    def start(url: str, count: int = 2, *flags: str) -> list[Replica]:
        replicas = []
        for _ in range(count):
            log_dir = tmp_path / f"gateway-{len(started)}"
            log_dir.mkdir()
            process = start_spark_gateway(
                triton_server, rvc_service.address, log_dir, f"--saved-voices-database={url}", *flags
            )
            replica = Replica(process)
            started.append(replica)
            replicas.append(replica)
        return replicas

    yield start
    for replica in started:
        replica.channel.close()
        replica.process.stop()


def test_created_on_one_replica_synthesizes_on_the_other_and_deletes_reach_it(
    pg_url: str, start_replicas: Callable[..., list[Replica]]
) -> None:
    a, b = start_replicas(pg_url)
    voice = a.create("fleet-voice")
    assert until(lambda: usable(b, "fleet-voice"), 1.0) < 1.0
    on_b = b.stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="fleet-voice"), timeout=30).voice
    assert on_b.saved == voice.saved and on_b.available
    audio_b = pcm_bytes(synthesize(b.stub, "fleet-voice", TEXT, seed=5))
    assert len(audio_b) > 0
    assert pcm_bytes(synthesize(a.stub, "fleet-voice", TEXT, seed=5)) == audio_b  # the same stored reference
    saved_on_b = b.stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(saved_only=True), timeout=30).voices
    assert [v.name for v in saved_on_b] == ["fleet-voice"]

    a.stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="fleet-voice"), timeout=30)
    assert until(lambda: not usable(b, "fleet-voice"), 1.0) < 1.0
    error = rpc_error(lambda: synthesize(b.stub, "fleet-voice", TEXT, seed=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    store = b.store_status()
    assert store.serving and store.target == database_target(pg_url) and DUMMY_PASSWORD not in str(store)
    assert b.store_health() == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_creates_of_one_name_on_two_replicas_make_one_voice(
    pg_url: str, start_replicas: Callable[..., list[Replica]]
) -> None:
    a, b = start_replicas(pg_url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(replica.create, "race", seed) for seed, replica in enumerate((a, b))]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result().name)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())
    assert sorted(map(str, outcomes)) == sorted(["race", str(grpc.StatusCode.ALREADY_EXISTS)])
    until(lambda: usable(a, "race") and usable(b, "race"), 1.0)
    assert (
        a.stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="race"), timeout=30).voice
        == b.stub.GetVoice(tts_gateway_pb2.GetVoiceRequest(name="race"), timeout=30).voice
    )


def test_the_count_quota_holds_across_replicas(pg_url: str, start_replicas: Callable[..., list[Replica]]) -> None:
    a, b = start_replicas(pg_url, 2, "--max-saved-voices=3")
    a.create("q1", 1)
    b.create("q2", 2)
    a.create("q3", 3)
    for replica, name in ((b, "q4"), (a, "q5")):
        error = rpc_error(lambda replica=replica, name=name: replica.create(name, 4))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 of 3" in (error.details() or "")
    b.stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="q1"), timeout=30)
    assert a.create("q4", 4).name == "q4"


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start_new()
    yield server
    server.destroy()


def test_a_replica_without_its_database_says_so_and_catches_up(
    own_server: PostgresServer, start_replicas: Callable[..., list[Replica]]
) -> None:
    url = own_server.create_database()
    target = database_target(url)
    a, b = start_replicas(url)
    a.create("before", 7)
    until(lambda: usable(b, "before"), 1.0)
    own_server.stop()
    until(lambda: not b.store_status().serving, 10.0)

    store = b.store_status()
    assert store.target == target and store.last_error and DUMMY_PASSWORD not in str(store)
    assert b.store_health() == health_pb2.HealthCheckResponse.NOT_SERVING
    for call in (
        lambda: b.create("during", 8),
        lambda: b.stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="before"), timeout=30),
        lambda: b.stub.ListVoices(tts_gateway_pb2.ListVoicesRequest(saved_only=True), timeout=30),
        lambda: synthesize(b.stub, "never-cached", TEXT, seed=1),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert target in (error.details() or "") and DUMMY_PASSWORD not in (error.details() or "")
    # Configured voices are served as before, and so is the saved voice this replica holds.
    assert len(pcm_bytes(synthesize(b.stub, "joe", TEXT, seed=1))) > 0
    assert len(pcm_bytes(synthesize(b.stub, "before", TEXT, seed=1))) > 0

    own_server.start()
    until(lambda: a.store_status().serving, 15.0)
    a.create("after", 9)
    a.stub.DeleteVoice(tts_gateway_pb2.DeleteVoiceRequest(name="before"), timeout=30)
    until(lambda: b.store_status().serving and usable(b, "after") and not usable(b, "before"), 15.0)
    assert b.store_health() == health_pb2.HealthCheckResponse.SERVING
    assert len(pcm_bytes(synthesize(b.stub, "after", TEXT, seed=1))) > 0

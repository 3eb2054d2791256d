"""orpheus_tts on a real Triton server, driven directly (no gateway), on the tiny checkpoint.

The tiny LM is wired to speak in frames (voice_triton.tiny.orpheus); at a high temperature it strays into
text and wrong-position tokens, which is the invalid-token path. Sample counts are checked against the model's own
counters (frames sent, tokens generated, tokens skipped) read from Triton's metrics port.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric, scrape
from tests.waiting import assert_steady, wait_until

pytestmark = pytest.mark.timeout(300)

FRAME = 2048  # samples per SNAC frame at 24 kHz
SPEAKERS = ["tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe"]
_DTYPES = {"FP32": np.float32, "INT32": np.int32, "UINT64": np.uint64}


@dataclass
class Result:
    chunks: list[np.ndarray] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def inputs(text: str, **controls: tuple[str, float]) -> list[triton_grpc.InferInput]:
    """target_text plus optional controls given as name=(datatype, value)."""
    text_input = triton_grpc.InferInput("target_text", [1, 1], "BYTES")
    text_input.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
    tensors = [text_input]
    for name, (datatype, value) in controls.items():
        tensor = triton_grpc.InferInput(name, [1, 1], datatype)
        tensor.set_data_from_numpy(np.array([[value]], dtype=_DTYPES[datatype]))
        tensors.append(tensor)
    return tensors


class OrpheusStream:
    """One ModelStreamInfer stream to orpheus_tts; `run` sends one request and collects its responses."""

    def __init__(self, url: str) -> None:
        self.client = triton_grpc.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error, time.monotonic())))

    def send(self, tensors: list[triton_grpc.InferInput]) -> None:
        self.client.async_stream_infer("orpheus_tts", tensors, enable_empty_final_response=True)

    def next(self, timeout: float = 120.0) -> tuple[np.ndarray | None, bool, str, float]:
        result, error, arrived = self.responses.get(timeout=timeout)
        if error is not None:
            return None, True, str(error), arrived
        audio = result.as_numpy("waveform")
        final = result.get_response().parameters["triton_final_response"].bool_param
        return (audio.reshape(-1) if audio is not None and audio.size else None), final, "", arrived

    def run(self, tensors: list[triton_grpc.InferInput]) -> Result:
        self.send(tensors)
        result = Result()
        while True:
            audio, final, error, arrived = self.next()
            if error:
                result.error = error
                return result
            if audio is not None:
                result.chunks.append(audio)
                result.arrivals.append(arrived)
            if final:
                return result

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


@pytest.fixture
def stream(orpheus_triton: TritonServer) -> Iterator[OrpheusStream]:
    client = OrpheusStream(orpheus_triton.grpc_url)
    yield client
    client.close()


def counters(server: TritonServer) -> dict[str, float]:
    text = scrape(server.metrics_url)
    names = ("tokens", "invalid_tokens", "audio_frames", "requests_cancelled", "slow_requests")
    return {name: metric(text, f"orpheus_{name}_total") for name in names}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def test_config_declares_what_the_gateway_reads(orpheus_triton: TritonServer) -> None:
    client = triton_grpc.InferenceServerClient(orpheus_triton.grpc_url)
    config = client.get_model_config("orpheus_tts", as_json=True)["config"]
    params = {k: v.get("string_value", "") for k, v in config["parameters"].items()}
    assert params["sample_rate_hz"] == "24000"
    assert params["supported_modes"] == "preset_speaker"
    assert params["speakers"].split(",") == SPEAKERS
    assert config["model_transaction_policy"]["decoupled"] is True
    names = {i["name"] for i in config["input"]}
    assert {"target_text", "speaker_id", "temperature", "top_p", "repetition_penalty", "max_new_tokens"} <= names
    assert [o["name"] for o in config["output"]] == ["waveform"]


def test_frames_stream_in_order_with_exact_lengths(orpheus_triton: TritonServer, stream: OrpheusStream) -> None:
    before = counters(orpheus_triton)
    result = stream.run(inputs("Hello there, a longer piece.", seed=("UINT64", 11), max_new_tokens=("INT32", 210)))
    assert not result.error, result.error
    counted = delta(before, counters(orpheus_triton))
    sizes = [chunk.size for chunk in result.chunks]
    # One frame per response while generating, the last two frames (the look-ahead) in the flush.
    assert sizes[:-1] == [FRAME] * (len(sizes) - 1) and sizes[-1] in (FRAME, 2 * FRAME)
    assert result.audio.size == counted["audio_frames"] * FRAME
    assert counted["audio_frames"] == (counted["tokens"] - counted["invalid_tokens"]) // 7
    assert np.isfinite(result.audio).all() and np.abs(result.audio).max() > 0
    # Streamed: the first frame arrives well before the last.
    assert len(result.arrivals) >= 5 and result.arrivals[-1] - result.arrivals[0] > 0.2


def test_every_speaker_is_served(stream: OrpheusStream) -> None:
    for speaker_id in (0, len(SPEAKERS) - 1):
        result = stream.run(inputs("Hi.", speaker_id=("INT32", speaker_id), max_new_tokens=("INT32", 28)))
        assert not result.error and result.audio.size % FRAME == 0 and result.audio.size > 0


def test_invalid_tokens_are_skipped_and_counted(orpheus_triton: TritonServer, stream: OrpheusStream) -> None:
    before = counters(orpheus_triton)
    hot = {"temperature": ("FP32", 1.5), "top_p": ("FP32", 1.0), "max_new_tokens": ("INT32", 210)}
    result = stream.run(inputs("Stray tokens.", seed=("UINT64", 3), **hot))
    assert not result.error, result.error
    counted = delta(before, counters(orpheus_triton))
    assert counted["invalid_tokens"] > 0
    assert result.audio.size == counted["audio_frames"] * FRAME > 0
    assert counted["audio_frames"] == (counted["tokens"] - counted["invalid_tokens"]) // 7


def test_same_seed_same_audio_other_seed_other_audio(orpheus_triton: TritonServer, stream: OrpheusStream) -> None:
    runs = []
    for seed in (5, 5, 6):
        before = counters(orpheus_triton)
        controls = {"temperature": ("FP32", 1.2), "max_new_tokens": ("INT32", 140)}
        result = stream.run(inputs("Determinism.", seed=("UINT64", seed), **controls))
        assert not result.error, result.error
        runs.append((result.audio, delta(before, counters(orpheus_triton))))
    # The seed drives the LM's sampling and SNAC's noise blocks: the same tokens, frames, skips and samples.
    assert runs[0][1] == runs[1][1] and np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][0].size != runs[2][0].size or not np.array_equal(runs[0][0], runs[2][0])


def test_concurrent_requests_give_their_own_audio(orpheus_triton: TritonServer, stream: OrpheusStream) -> None:
    """Two requests at once (threads in one model instance) give what each gives alone: no shared sampling or noise
    state between them."""
    texts = {21: "First of two at once.", 22: "Second of two, at the same time."}

    def request(seed: int) -> list[triton_grpc.InferInput]:
        return inputs(texts[seed], seed=("UINT64", seed), max_new_tokens=("INT32", 140))

    alone = {seed: stream.run(request(seed)).audio for seed in texts}
    results: dict[int, Result] = {}
    clients = {seed: OrpheusStream(orpheus_triton.grpc_url) for seed in texts}
    try:
        threads = [
            threading.Thread(target=lambda s=seed: results.update({s: clients[s].run(request(s))})) for seed in texts
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for client in clients.values():
            client.close()
    for seed in texts:
        assert not results[seed].error and alone[seed].size > 0
        assert np.array_equal(results[seed].audio, alone[seed])


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"speaker_id": ("INT32", 8)}, "speaker_id 8 is not a speaker: 0..7 (tara, leah"),
        ({"temperature": ("FP32", 2.5)}, "temperature must be between 0 and 2"),
        ({"top_p": ("FP32", 0.0)}, "top_p must be between 0.01 and 1"),
        ({"repetition_penalty": ("FP32", 0.5)}, "repetition_penalty must be between 1 and 2"),
        ({"max_new_tokens": ("INT32", 100000)}, "max_new_tokens must be between 7 and 8192"),
        ({"temperature": ("FP32", float("nan"))}, "temperature must be between"),
    ],
)
def test_bad_controls_get_a_clear_error(stream: OrpheusStream, controls: dict, message: str) -> None:
    result = stream.run(inputs("Text.", **controls))
    assert message in result.error and not result.chunks
    assert not stream.run(inputs("Still fine.", max_new_tokens=("INT32", 28))).error


def test_empty_text_is_an_error(stream: OrpheusStream) -> None:
    assert "target_text is empty" in stream.run(inputs("   ")).error


def test_cancel_stops_generation(orpheus_triton: TritonServer) -> None:
    before = counters(orpheus_triton)
    client = OrpheusStream(orpheus_triton.grpc_url)
    # Hot sampling rarely ends a piece: it would run to 4000 tokens (about 50 s here) unless cancelled.
    long = {"temperature": ("FP32", 1.5), "top_p": ("FP32", 1.0), "max_new_tokens": ("INT32", 4000)}
    client.send(inputs("A very long piece of speech.", seed=("UINT64", 7), **long))
    audio, final, error, _ = client.next()
    assert audio is not None and not final and not error
    client.close(cancel=True)
    wait_until(
        lambda: counters(orpheus_triton)["requests_cancelled"] > before["requests_cancelled"],
        within=30,
        interval=0.2,
        what="the model to see the cancellation",
    )
    # Nothing generating now: the token count holds still, far below max_new_tokens.
    tokens = assert_steady(lambda: counters(orpheus_triton)["tokens"], period=1.0, what="tokens")
    assert tokens - before["tokens"] < 1000
    # Checked at every frame boundary: measured, the model stopped at the frame after the one the client saw (2 frames
    # sent, 28 tokens); the bound leaves room for a cancel that takes a frame or two to arrive on a busy machine.
    assert delta(before, counters(orpheus_triton))["audio_frames"] <= 4
    fresh = OrpheusStream(orpheus_triton.grpc_url)
    try:
        assert not fresh.run(inputs("After the cancel.", max_new_tokens=("INT32", 28))).error
    finally:
        fresh.close()


def test_generation_rate_is_visible(orpheus_triton: TritonServer, stream: OrpheusStream) -> None:
    before = counters(orpheus_triton)
    assert not stream.run(inputs("Rate.", seed=("UINT64", 2), max_new_tokens=("INT32", 70))).error
    text = scrape(orpheus_triton.metrics_url)
    rate = metric(text, "orpheus_tokens_per_second")
    assert rate > 0 and metric(text, "orpheus_generation_seconds_total") > 0
    # A request below the 82.03 tokens/s real time needs is counted as slow, one above is not.
    slow = delta(before, counters(orpheus_triton))["slow_requests"]
    assert slow == (1 if rate < 7 * 24000 / 2048 else 0)

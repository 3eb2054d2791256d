"""The Piper models on a real Triton server: config contract, decoupled streaming, cancellation, errors, metrics."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.fixtures.triton_server import TritonServer
from tests.prometheus import metric
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STREAM = "piper_tts"
WHOLE = "piper_tts_whole"
RATE = 22050
THREE_SENTENCES = (
    "Hi there. This second sentence is a good deal longer than the first one and the third. A medium third one."
)
PARAGRAPH = (
    "Streaming speech matters most for long answers. "
    "A listener should hear the first words while the rest is still being made. "
    "Each sentence is synthesized on its own and sent as soon as it is ready. "
    "The server keeps the order of the sentences, so the audio plays back as written. "
    "When the caller hangs up, the remaining sentences are never synthesized. "
    "That saves compute for the callers who are still listening. "
    "This paragraph is long enough to show the difference in timing."
)
# Noise off makes Piper deterministic, so streamed pieces can be compared sample for sample with the whole model.
NO_NOISE = {"noise_scale": 0.0, "noise_w": 0.0}


def _input(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def tts_inputs(text: str | bytes, **controls: float | int) -> list[grpcclient.InferInput]:
    inputs = [_input("target_text", np.array([[text]], dtype=object), "BYTES")]
    for name, value in controls.items():
        if name == "speaker_id":
            inputs.append(_input(name, np.array([[value]], dtype=np.int32), "INT32"))
        else:
            inputs.append(_input(name, np.array([[value]], dtype=np.float32), "FP32"))
    return inputs


@dataclass
class StreamResult:
    pieces: list[np.ndarray] = field(default_factory=list)
    arrivals_s: list[float] = field(default_factory=list)  # since the request was sent
    final_s: float | None = None
    error: str | None = None
    response_ids: list[str] = field(default_factory=list)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)


def _is_final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def stream(
    server: TritonServer, inputs: list[grpcclient.InferInput], request_id: str = "", timeout_s: float = 90.0
) -> StreamResult:
    """One decoupled request on its own gRPC stream, collected until the final flag or an error."""
    events: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    out = StreamResult()
    try:
        client.start_stream(callback=lambda result, error: events.put((time.monotonic(), result, error)))
        start = time.monotonic()
        client.async_stream_infer(STREAM, inputs, request_id=request_id, enable_empty_final_response=True)
        while True:
            at, result, error = events.get(timeout=timeout_s)
            if error is not None:
                out.error = str(error)
                break
            out.response_ids.append(result.get_response().id)
            waveform = result.as_numpy("waveform")
            if waveform is not None:
                assert waveform.dtype == np.float32 and waveform.ndim == 2 and waveform.shape[0] == 1
                out.pieces.append(waveform[0])
                out.arrivals_s.append(at - start)
            if _is_final(result):
                out.final_s = at - start
                break
    finally:
        client.stop_stream()
        client.close()
    return out


def whole(server: TritonServer, inputs: list[grpcclient.InferInput]) -> np.ndarray:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        waveform = client.infer(WHOLE, inputs).as_numpy("waveform")
    assert waveform is not None and waveform.dtype == np.float32 and waveform.shape[0] == 1
    return waveform[0]


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def assert_server_ready(server: TritonServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_ready()
        assert client.is_model_ready(STREAM) and client.is_model_ready(WHOLE)


# ---- configuration contract ---------------------------------------------------------------------------------------


def test_server_models_ready_and_config_declares_rate_and_capabilities(triton_server: TritonServer) -> None:
    assert_server_ready(triton_server)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        for model, decoupled in ((STREAM, True), (WHOLE, False)):
            config = client.get_model_config(model, as_json=True)["config"]
            params = {k: v.get("string_value", "") for k, v in config["parameters"].items()}  # "" is omitted in JSON
            assert params["sample_rate_hz"] == str(RATE)
            assert params["supported_modes"].split(",") == ["preset_speaker"]
            assert params["language_code"] == "en_US"
            assert params["speakers"].split(",") == ["joe"]
            assert int(params["max_text_chars"]) > 0
            assert params["supports_reference_audio"] == "false"
            assert params["supports_instruct"] == "false"
            assert bool(config.get("model_transaction_policy", {}).get("decoupled", False)) is decoupled
            inputs = {i["name"]: i for i in config["input"]}
            assert inputs["target_text"]["data_type"] == "TYPE_STRING"
            assert not inputs["target_text"].get("optional", False)
            for name, dtype in (("reference_wav", "TYPE_FP32"), ("reference_wav_len", "TYPE_INT32")):
                assert inputs[name]["data_type"] == dtype and inputs[name]["optional"]
            assert inputs["reference_text"]["optional"] and inputs["length_scale"]["data_type"] == "TYPE_FP32"
            assert [(o["name"], o["data_type"]) for o in config["output"]] == [("waveform", "TYPE_FP32")]


# ---- streaming ----------------------------------------------------------------------------------------------------


def test_three_sentences_stream_in_order_then_final_flag(triton_server: TritonServer) -> None:
    result = stream(triton_server, tts_inputs(THREE_SENTENCES, **NO_NOISE), request_id="three")
    assert result.error is None, result.error
    assert len(result.pieces) >= 3
    assert result.final_s is not None and result.final_s >= result.arrivals_s[-1]
    assert set(result.response_ids) == {"three"}
    assert result.arrivals_s == sorted(result.arrivals_s)
    for piece in result.pieces:
        assert piece.size > 0.2 * RATE  # every sentence here lasts well over 0.2 s
        assert rms(piece) > 0.02, "piece is (nearly) silent"
        assert np.all(np.isfinite(piece)) and np.max(np.abs(piece)) <= 1.0
    seconds = result.audio.size / RATE
    per_char = seconds / len(THREE_SENTENCES)
    assert 0.04 <= per_char <= 0.15, f"{seconds:.2f}s for {len(THREE_SENTENCES)} chars"
    # Ordered as written: the long middle sentence is the longest piece, the greeting the shortest.
    sizes = [p.size for p in result.pieces]
    assert sizes.index(max(sizes)) == 1 and sizes.index(min(sizes)) == 0, sizes
    # And sample-exact: the pieces in arrival order are the whole model's waveform.
    reference = whole(triton_server, tts_inputs(THREE_SENTENCES, **NO_NOISE))
    assert reference.size == result.audio.size
    np.testing.assert_allclose(result.audio, reference, atol=1e-4)


def test_first_response_arrives_well_before_the_stream_ends(triton_server: TritonServer) -> None:
    result = stream(triton_server, tts_inputs(PARAGRAPH))
    assert result.error is None, result.error
    assert len(result.pieces) >= 6
    assert result.final_s is not None
    assert result.arrivals_s[0] < 0.5 * result.final_s, (result.arrivals_s[0], result.final_s)
    per_char = result.audio.size / RATE / len(PARAGRAPH)
    assert 0.04 <= per_char <= 0.15


def pieces_made(server: TritonServer) -> float:
    """Sentences the streaming model has synthesized so far."""
    return metric(server.metrics(), "tts_pieces_total", model=STREAM)


def requests_taken(server: TritonServer) -> float:
    """Requests the streaming model has taken over (Triton counts a decoupled request as a success then)."""
    return metric(server.metrics(), "nv_inference_request_success", model=STREAM)


def test_new_stream_is_not_queued_behind_a_long_one(triton_server: TritonServer) -> None:
    """One instance interleaves streams by sentence: a short request starting mid-way is served long before the
    long request's end, not after it."""
    long_text = " ".join(f"Long request, sentence number {i}, keeps the instance busy." for i in range(14))
    long_result: dict[str, StreamResult] = {}
    worker = threading.Thread(target=lambda: long_result.update(r=stream(triton_server, tts_inputs(long_text))))
    pieces = pieces_made(triton_server)
    started = time.monotonic()
    worker.start()
    wait_until(lambda: pieces_made(triton_server) > pieces, within=60, what="the long stream's first sentence")
    short_started = time.monotonic()
    short = stream(triton_server, tts_inputs("Short one."))
    short_first_at = short_started + short.arrivals_s[0]
    worker.join(timeout=120)
    long = long_result["r"]
    assert short.error is None and long.error is None and long.final_s is not None
    long_end_at = started + long.final_s
    assert short_first_at - short_started < 0.5 * (long_end_at - short_started), (short.arrivals_s, long.final_s)


def test_playback_ahead_hint_lets_a_new_stream_go_first(triton_server: TritonServer) -> None:
    """A request saying its listener has a minute of audio buffered waits behind one that arrived after it."""
    busy_text = " ".join(f"Background sentence {i} keeps the instance busy." for i in range(6))
    results: dict[str, StreamResult] = {}
    sent_at: dict[str, float] = {}

    def run(name: str, text: str, **controls: float) -> None:
        sent_at[name] = time.monotonic()
        results[name] = stream(triton_server, tts_inputs(text, **controls))

    busy = threading.Thread(target=run, args=("busy", busy_text))
    accepted = requests_taken(triton_server)
    busy.start()
    # The instance is synthesizing the background stream's first sentence when the other two arrive, in order.
    wait_until(lambda: requests_taken(triton_server) > accepted, within=30, what="the background stream")
    ahead = threading.Thread(target=run, args=("ahead", "I am far ahead. No hurry."), kwargs={"playback_ahead_s": 60.0})
    ahead.start()
    wait_until(lambda: requests_taken(triton_server) > accepted + 1, within=30, what="the request that is ahead")
    run("fresh", "I just started. Serve me.")
    for thread in (busy, ahead):
        thread.join(timeout=120)
    assert all(r.error is None and r.pieces for r in results.values()), {k: r.error for k, r in results.items()}
    first = {name: sent_at[name] + r.arrivals_s[0] for name, r in results.items()}
    assert sent_at["ahead"] < sent_at["fresh"] and first["fresh"] < first["ahead"], first


def test_length_scale_changes_duration(triton_server: TritonServer) -> None:
    slow = whole(
        triton_server, tts_inputs("The quick brown fox jumps over the lazy dog.", length_scale=1.6, **NO_NOISE)
    )
    normal = whole(triton_server, tts_inputs("The quick brown fox jumps over the lazy dog.", **NO_NOISE))
    assert 1.3 < slow.size / normal.size < 1.9


def test_cancel_mid_stream_stops_synthesis(triton_server: TritonServer) -> None:
    sentences = 20
    text = " ".join(f"This is sentence number {i} of a deliberately long paragraph." for i in range(sentences))
    before = triton_server.metrics()
    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    client.async_stream_infer(STREAM, tts_inputs(text), request_id="cancel-me", enable_empty_final_response=True)
    received = 0
    while received < 2:
        _result, error = events.get(timeout=60)
        assert error is None, error
        received += 1
    client.stop_stream(cancel_requests=True)  # cancels the gRPC stream, so Triton cancels the request
    client.close()

    # The model counts a cancellation when it notices it, which is before its next sentence.
    cancelled_before = metric(before, "tts_requests_cancelled_total", model=STREAM)

    def metrics_once_cancelled() -> str | None:
        text = triton_server.metrics()
        return text if metric(text, "tts_requests_cancelled_total", model=STREAM) > cancelled_before else None

    after = wait_until(metrics_once_cancelled, within=30, interval=0.2, what="the model to count the cancellation")
    assert metric(after, "tts_requests_cancelled_total", model=STREAM) - cancelled_before == 1
    synthesized = metric(after, "tts_pieces_total", model=STREAM) - metric(before, "tts_pieces_total", model=STREAM)
    skipped = metric(after, "tts_pieces_skipped_total", model=STREAM) - metric(
        before, "tts_pieces_skipped_total", model=STREAM
    )
    assert synthesized + skipped == sentences
    assert synthesized <= received + 2, f"{synthesized} sentences synthesized after {received} were received"
    assert skipped >= sentences - received - 2
    assert_server_ready(triton_server)
    follow_up = stream(triton_server, tts_inputs("Still here."))
    assert follow_up.error is None and follow_up.pieces


# ---- errors -------------------------------------------------------------------------------------------------------

OVER_LIMIT = "word " * 500  # 2500 characters against max_text_chars 2000

BAD_REQUESTS: dict[str, tuple[list[grpcclient.InferInput], list[str]]] = {
    "empty text": (tts_inputs(""), ["target_text is empty"]),
    "blank text": (tts_inputs("   \n "), ["target_text is empty"]),
    "over-long text": (tts_inputs(OVER_LIMIT), ["2499 characters", "limit of 2000", "split the text"]),
    "invalid utf-8": (tts_inputs(b"caf\xe9 \xff"), ["not valid UTF-8", "offset 3"]),
    "wrong dtype": ([_input("target_text", np.array([[7]], dtype=np.int32), "INT32")], ["target_text", "BYTES"]),
    "wrong control dtype": (
        [*tts_inputs("Hello."), _input("length_scale", np.array([[1.0]], dtype=np.float64), "FP64")],
        ["length_scale", "FP32"],
    ),
    "reference audio": (
        [*tts_inputs("Hello."), _input("reference_wav", np.full((1, 16000), 0.1, dtype=np.float32), "FP32")],
        ["cannot clone", "supports_reference_audio=false", "reference_wav"],
    ),
    "reference text": (
        [*tts_inputs("Hello."), _input("reference_text", np.array([["some words"]], dtype=object), "BYTES")],
        ["cannot clone"],
    ),
    "length_scale too large": (tts_inputs("Hello.", length_scale=10.0), ["length_scale must be between", "10.0"]),
    "length_scale nan": (tts_inputs("Hello.", length_scale=float("nan")), ["length_scale must be between"]),
    "negative noise": (tts_inputs("Hello.", noise_scale=-1.0), ["noise_scale must be between"]),
    "negative playback hint": (
        tts_inputs("Hello.", playback_ahead_s=-1.0),
        ["playback_ahead_s must be between"],
    ),
    "unknown speaker": (tts_inputs("Hello.", speaker_id=3), ["speaker_id 3 is out of range", "0=joe"]),
    "nothing to speak": (tts_inputs("?? — ??"), ["nothing to speak"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gives_clear_error_and_server_stays_ready(triton_server: TritonServer, case: str) -> None:
    inputs, expected = BAD_REQUESTS[case]
    streamed = stream(triton_server, inputs)
    assert streamed.error is not None and not streamed.pieces, f"{case}: no error, {len(streamed.pieces)} pieces"
    with (
        grpcclient.InferenceServerClient(triton_server.grpc_url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.infer(WHOLE, inputs)
    for message in (streamed.error, str(raised.value)):
        for fragment in expected:
            assert fragment in message, f"{case}: {fragment!r} not in {message!r}"
    assert_server_ready(triton_server)


def test_empty_reference_inputs_are_accepted(triton_server: TritonServer) -> None:
    """Spark-TTS/CosyVoice clients always send the reference tensors; empty ones must not be an error here."""
    inputs = [
        *tts_inputs("Hello there."),
        _input("reference_wav", np.zeros((1, 0), dtype=np.float32), "FP32"),
        _input("reference_wav_len", np.array([[0]], dtype=np.int32), "INT32"),
        _input("reference_text", np.array([[""]], dtype=object), "BYTES"),
    ]
    result = stream(triton_server, inputs)
    assert result.error is None and result.pieces


def test_error_then_good_request_on_the_same_stream(triton_server: TritonServer) -> None:
    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        client.async_stream_infer(STREAM, tts_inputs(""), request_id="bad", enable_empty_final_response=True)
        client.async_stream_infer(STREAM, tts_inputs("Fine."), request_id="good", enable_empty_final_response=True)
        errors, audio, finals = 0, 0, 0
        while finals < 1:
            result, error = events.get(timeout=60)
            if error is not None:
                errors += 1
                continue
            audio += result.as_numpy("waveform") is not None
            finals += _is_final(result) and result.get_response().id == "good"
        client.stop_stream()
    assert errors == 1 and audio >= 1


# ---- whole waveform and metrics ------------------------------------------------------------------------------------


def test_whole_model_returns_one_response_of_comparable_duration(triton_server: TritonServer) -> None:
    streamed = stream(triton_server, tts_inputs(PARAGRAPH))
    one = whole(triton_server, tts_inputs(PARAGRAPH))
    assert streamed.error is None
    ratio = one.size / streamed.audio.size
    assert 0.7 < ratio < 1.4, ratio  # noise makes durations differ a little between runs
    assert rms(one) > 0.02
    assert 0.04 <= one.size / RATE / len(PARAGRAPH) <= 0.15


def test_metrics_count_successful_requests(triton_server: TritonServer) -> None:
    before = requests_taken(triton_server)
    for _ in range(2):
        assert stream(triton_server, tts_inputs("Count me.")).error is None
    wait_until(lambda: requests_taken(triton_server) >= before + 2, within=10, interval=0.2, what="2 more successes")

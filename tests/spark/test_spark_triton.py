"""Spark-TTS on a real Triton server, driven directly (no gateway), on the tiny checkpoint in the published layout.

What is checked against something other than the model itself: token counts from the model's own counter against
the samples received (BiCodec's 320 samples per token), the spark_audio_tokenizer's inference count (Triton's nv_*
metric) for the cache, and the streamed audio against one whole-utterance decode of the same tokens for the seams.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.fixtures.triton_server import REPO_ROOT, TritonServer
from tests.prometheus import metric, scrape
from tests.spark.helpers import HOP, SparkStream, spark_inputs, speech_like
from tests.waiting import assert_steady, wait_until

pytestmark = pytest.mark.timeout(600)

_ENGINE = REPO_ROOT / "triton" / "model_repo" / "spark_tts" / "1" / "spark_engine.py"
_spec = importlib.util.spec_from_file_location("spark_engine", _ENGINE)
assert _spec is not None and _spec.loader is not None
spark_engine = importlib.util.module_from_spec(_spec)
sys.modules["spark_engine"] = spark_engine  # dataclasses look their module up while the class is built
_spec.loader.exec_module(spark_engine)


@pytest.fixture
def stream(spark_triton: TritonServer) -> Iterator[SparkStream]:
    client = SparkStream(spark_triton.grpc_url)
    yield client
    client.close()


def tokenize(server: TritonServer, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    audio = triton_grpc.InferInput("reference_wav", [1, wav.size], "FP32")
    audio.set_data_from_numpy(wav.reshape(1, -1))
    length = triton_grpc.InferInput("reference_wav_len", [1, 1], "INT32")
    length.set_data_from_numpy(np.array([[wav.size]], dtype=np.int32))
    result = client.infer("spark_audio_tokenizer", [audio, length], client_timeout=120)
    return result.as_numpy("global_tokens"), result.as_numpy("semantic_tokens")


def vocode(server: TritonServer, global_tokens: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    g = triton_grpc.InferInput("global_tokens", [1, global_tokens.size], "INT32")
    g.set_data_from_numpy(global_tokens.reshape(1, -1).astype(np.int32))
    s = triton_grpc.InferInput("semantic_tokens", [1, semantic.size], "INT32")
    s.set_data_from_numpy(semantic.reshape(1, -1).astype(np.int32))
    return client.infer("spark_vocoder", [g, s], client_timeout=120).as_numpy("waveform").reshape(-1)


def test_model_configs_declare_what_the_gateway_reads(spark_triton: TritonServer) -> None:
    client = triton_grpc.InferenceServerClient(spark_triton.grpc_url)
    config = client.get_model_config("spark_tts", as_json=True)["config"]
    params = {k: v.get("string_value", "") for k, v in config["parameters"].items()}
    assert params["sample_rate_hz"] == "16000"
    assert set(params["supported_modes"].split(",")) == {"zero_shot", "cross_lingual", "voice_design"}
    assert config["model_transaction_policy"]["decoupled"] is True
    names = {i["name"] for i in config["input"]}
    assert {"target_text", "reference_wav", "reference_wav_len", "reference_text"} <= names
    assert [o["name"] for o in config["output"]] == ["waveform"]


def test_audio_tokenizer_and_vocoder_shapes(spark_triton: TritonServer) -> None:
    wav = speech_like(3.0)
    global_tokens, semantic = tokenize(spark_triton, wav)
    assert global_tokens.shape == (1, 32) and global_tokens.dtype == np.int32
    assert global_tokens.min() >= 0 and global_tokens.max() < 4096
    # wav2vec2 frames at 50 per second: about 150 semantic tokens for 3 s.
    assert abs(semantic.shape[1] - 150) <= 2 and semantic.max() < 8192
    audio = vocode(spark_triton, global_tokens, semantic[:, :37])
    assert audio.size == 37 * HOP  # BiCodec's token rate: exactly 320 samples per token at 16 kHz
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_two_references_give_different_speakers(spark_triton: TritonServer) -> None:
    low, _ = tokenize(spark_triton, speech_like(3.0, f0=110.0, seed=1))
    high, _ = tokenize(spark_triton, speech_like(3.0, f0=260.0, seed=2))
    again, _ = tokenize(spark_triton, speech_like(3.0, f0=110.0, seed=1))
    assert np.array_equal(low, again)
    assert not np.array_equal(low, high)


def test_audio_length_is_tokens_times_hop(spark_triton: TritonServer, stream: SparkStream) -> None:
    reference = speech_like(2.5, seed=3)
    for seed, text in ((11, "Hello there."), (12, "A second, somewhat longer sentence to speak.")):
        before = metric(scrape(spark_triton.metrics_url), "spark_semantic_tokens_total")
        result = stream.run(spark_inputs(text, reference=reference, reference_text="reference words", seed=seed))
        assert not result.error, result.error
        tokens = metric(scrape(spark_triton.metrics_url), "spark_semantic_tokens_total") - before
        assert tokens > 0
        assert result.audio.size == tokens * HOP


def test_same_seed_same_audio_other_seed_other_audio(stream: SparkStream) -> None:
    reference = speech_like(2.0, seed=4)
    first = stream.run(spark_inputs("Determinism.", reference=reference, reference_text="ref", seed=5)).audio
    again = stream.run(spark_inputs("Determinism.", reference=reference, reference_text="ref", seed=5)).audio
    other = stream.run(spark_inputs("Determinism.", reference=reference, reference_text="ref", seed=6)).audio
    assert first.size > 0 and np.array_equal(first, again)
    assert first.size != other.size or not np.array_equal(first, other)


def test_different_references_give_different_audio(stream: SparkStream) -> None:
    a = stream.run(spark_inputs("Same words.", reference=speech_like(2.0, f0=110.0, seed=1), seed=9)).audio
    b = stream.run(spark_inputs("Same words.", reference=speech_like(2.0, f0=260.0, seed=2), seed=9)).audio
    assert a.size and b.size
    n = min(a.size, b.size)
    assert not np.allclose(a[:n], b[:n], atol=1e-4)


def test_repeated_reference_skips_the_audio_tokenizer(spark_triton: TritonServer, stream: SparkStream) -> None:
    reference = speech_like(2.2, f0=180.0, seed=7)

    def counts() -> tuple[float, float, float]:
        text = scrape(spark_triton.metrics_url)
        return (
            metric(text, "nv_inference_request_success", model="spark_audio_tokenizer"),
            metric(text, "spark_reference_tokens_total", result="hit"),
            metric(text, "spark_reference_tokens_total", result="miss"),
        )

    start = counts()
    assert not stream.run(spark_inputs("One.", reference=reference, seed=1)).error
    after_first = counts()
    assert after_first[0] == start[0] + 1 and after_first[2] == start[2] + 1
    for seed in (2, 3):
        assert not stream.run(spark_inputs("Again.", reference=reference, reference_text="words", seed=seed)).error
    after = counts()
    assert after[0] == after_first[0]  # Triton ran spark_audio_tokenizer no more
    assert after[1] == after_first[1] + 2


def test_voice_design_makes_a_speaker_from_attributes(stream: SparkStream) -> None:
    female = stream.run(spark_inputs("Designed.", gender="female", pitch="high", seed=21))
    male = stream.run(spark_inputs("Designed.", gender="male", pitch="low", seed=21))
    assert not female.error and not male.error
    assert female.audio.size % HOP == 0 and female.audio.size > 0
    n = min(female.audio.size, male.audio.size)
    assert not np.allclose(female.audio[:n], male.audio[:n], atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gender": "robot"}, "gender must be one of female, male"),
        ({}, "give reference audio"),
        ({"reference": speech_like(1.0), "reference_len": 10**6}, "reference_wav_len"),
        ({"reference": speech_like(31.0)}, "at most 30 s"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_model_keeps_serving(
    stream: SparkStream, kwargs: dict, message: str
) -> None:
    result = stream.run(spark_inputs("Text.", **kwargs))
    assert message in result.error
    assert not stream.run(spark_inputs("Still fine.", gender="female", seed=1)).error


def test_chunks_follow_the_growing_schedule(stream: SparkStream) -> None:
    # Find a seed whose piece is long enough for three chunks (the random model's lengths vary).
    for seed in range(30, 60):
        result = stream.run(spark_inputs("A long piece of speech.", gender="male", seed=seed))
        if len(result.chunks) >= 3:
            break
    else:
        pytest.fail("no seed gave a piece of three chunks")
    sizes = [c.size for c in result.chunks]
    # First chunk: 1.0 s of tokens less the 0.1 s overlap held for the cross-fade; then each window doubles.
    assert sizes[0] == (50 - 5) * HOP
    assert sizes[1] == 100 * HOP - 5 * HOP + 5 * HOP - 5 * HOP  # 100 new tokens, 5 taken from and 5 held back
    assert all(size % HOP == 0 for size in sizes)


def test_streamed_audio_matches_one_whole_decode(spark_triton: TritonServer) -> None:
    """The seams: the streaming decoder against spark_vocoder run once on all tokens (an independent rendering)."""
    global_tokens, semantic = tokenize(spark_triton, speech_like(6.0, seed=8))
    codes = semantic.reshape(-1)[:280]
    whole = vocode(spark_triton, global_tokens, codes)
    schedule = spark_engine.ChunkSchedule.from_seconds(
        first_s=1.0, scale=2.0, max_s=8.0, overlap_s=0.1, context_s=0.2, token_rate=50
    )

    def stream_with(schedule: object) -> tuple[np.ndarray, list[int]]:
        vocoder = spark_engine.StreamingVocoder(lambda c: vocode(spark_triton, global_tokens, c), schedule, HOP)
        pieces, seams = [], []
        for code in codes:
            vocoder.add(int(code))
            if vocoder.ready():
                pieces.append(vocoder.take())
                seams.append(sum(p.size for p in pieces))
        pieces.append(vocoder.take(final=True))
        return np.concatenate(pieces), seams[:-1] if seams and seams[-1] == whole.size else seams

    streamed, seams = stream_with(schedule)
    assert streamed.size == whole.size == codes.size * HOP
    assert len(seams) >= 2
    # A naive stream: no left context and no cross-fade (windows decoded alone and concatenated).
    naive, naive_seams = stream_with(spark_engine.ChunkSchedule(schedule.first, schedule.scale, schedule.maximum, 0, 0))
    level = float(np.sqrt(np.mean(whole**2)))

    def seam_error(audio: np.ndarray, at: list[int]) -> float:
        """RMS difference from the whole decode within two tokens of each seam, relative to the signal's level."""
        err = np.concatenate(
            [audio[max(0, s - 2 * HOP) : s + 2 * HOP] - whole[max(0, s - 2 * HOP) : s + 2 * HOP] for s in at]
        )
        return float(np.sqrt(np.mean(err**2))) / level

    ours, plain = seam_error(streamed, seams), seam_error(naive, naive_seams)
    assert ours < 0.1, ours  # close to the whole decode where the windows meet
    assert ours < 0.6 * plain, (ours, plain)  # and closer than plain concatenation
    overall = float(np.sqrt(np.mean((streamed - whole) ** 2))) / level
    assert overall < 0.6 * float(np.sqrt(np.mean((naive - whole) ** 2))) / level
    # No click: the sample-to-sample step across a seam is no bigger than the whole decode's largest step.
    jumps = [abs(float(streamed[s] - streamed[s - 1])) for s in seams]
    assert max(jumps) <= float(np.abs(np.diff(whole)).max())


def test_cancel_between_chunks_stops_generation(spark_triton: TritonServer) -> None:
    metrics_url = spark_triton.metrics_url
    # A long designed piece: find its first chunk, then cancel the stream.
    stream = SparkStream(spark_triton.grpc_url)
    cancelled_before = metric(scrape(metrics_url), "spark_requests_cancelled_total")
    for seed in range(30, 60):  # a seed whose piece has several chunks (as in the schedule test)
        probe = stream.run(spark_inputs("A long piece of speech.", gender="male", seed=seed))
        if len(probe.chunks) >= 3:
            break
    stream.send(spark_inputs("A long piece of speech.", gender="male", seed=seed))
    audio, final, error = stream.next()
    assert audio is not None and not final and not error
    stream.close(cancel=True)
    wait_until(
        lambda: metric(scrape(metrics_url), "spark_requests_cancelled_total") > cancelled_before,
        within=30,
        interval=0.2,
        what="the model to see the cancellation",
    )
    # Nothing generating now: the token count holds still over a second.
    assert_steady(lambda: metric(scrape(metrics_url), "spark_semantic_tokens_total"), period=1.0, what="tokens")
    fresh = SparkStream(spark_triton.grpc_url)
    try:
        assert not fresh.run(spark_inputs("After the cancel.", gender="female", seed=2)).error
    finally:
        fresh.close()


def test_prompt_forms_match_spark_tts() -> None:
    zero_shot = spark_engine.build_prompt(
        "target", global_codes=np.array([1, 2]), semantic_codes=np.array([7]), reference_text="ref"
    )
    assert zero_shot == (
        "<|task_tts|><|start_content|>reftarget<|end_content|><|start_global_token|><|bicodec_global_1|>"
        "<|bicodec_global_2|><|end_global_token|><|start_semantic_token|><|bicodec_semantic_7|>"
    )
    cross = spark_engine.build_prompt("target", global_codes=np.array([3]))
    assert cross.endswith("<|start_global_token|><|bicodec_global_3|><|end_global_token|>")
    assert "<|start_semantic_token|>" not in cross
    design = spark_engine.build_prompt("hi", gender="male", pitch="very_high", speed="low")
    assert design == (
        "<|task_controllable_tts|><|start_content|>hi<|end_content|><|start_style_label|>"
        "<|gender_1|><|pitch_label_4|><|speed_label_1|><|end_style_label|>"
    )
    with pytest.raises(spark_engine.PromptError, match="pitch must be one of"):
        spark_engine.build_prompt("hi", gender="male", pitch="loud")


def test_crossfade_keeps_level_and_length() -> None:
    ones = np.ones(100, np.float32)
    faded = spark_engine.crossfade(ones, ones)
    assert faded.size == 100 and np.allclose(faded, 1.0, atol=1e-6)
    ramp = spark_engine.crossfade(np.zeros(100, np.float32), ones)
    assert ramp[0] < 0.01 and ramp[-1] > 0.99 and np.all(np.diff(ramp) >= 0)


def test_schedule_from_seconds_matches_the_official_parameters() -> None:
    schedule = spark_engine.ChunkSchedule.from_seconds(
        first_s=1.0, scale=8.0, max_s=30.0, overlap_s=0.1, context_s=0.0, token_rate=50
    )
    assert (schedule.first, schedule.maximum, schedule.overlap) == (50, 1500, 5)


def test_checkpoint_tool_writes_the_published_layout(spark_checkpoint: Path) -> None:
    expected = [
        "config.yaml",
        "BiCodec/config.yaml",
        "BiCodec/model.safetensors",
        "wav2vec2-large-xlsr-53/config.json",
        "wav2vec2-large-xlsr-53/preprocessor_config.json",
        "wav2vec2-large-xlsr-53/pytorch_model.bin",
        "LLM/config.json",
        "LLM/model.safetensors",
        "LLM/tokenizer.json",
        "LLM/tokenizer_config.json",
    ]
    for relative in expected:
        assert (spark_checkpoint / relative).is_file(), relative
    top = (spark_checkpoint / "config.yaml").read_text()
    assert "latent_hop_length: 320" in top and "sample_rate: 16000" in top
    assert (spark_checkpoint / "BiCodec" / "config.yaml").read_text().startswith("audio_tokenizer:")


def test_four_concurrent_streams_all_complete(spark_triton: TritonServer) -> None:
    """Four request threads in one spark_tts instance: every stream ends with its audio and the server stays up
    (concurrent calls into Triton from request threads once crashed the server; they now take turns)."""
    import threading

    reference = speech_like(2.0, seed=61)
    errors: list[str] = []
    sizes: list[int] = []

    def client(offset: int) -> None:
        stream = SparkStream(spark_triton.grpc_url)
        try:
            for seed in range(offset, offset + 4):
                result = stream.run(spark_inputs("Four at once.", reference=reference, seed=seed))
                errors.append(result.error) if result.error else sizes.append(result.audio.size)
        finally:
            stream.close()

    threads = [threading.Thread(target=client, args=(100 + 10 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(sizes) == 16 and all(size > 0 and size % HOP == 0 for size in sizes)
    assert spark_triton.alive() and spark_triton.ready()

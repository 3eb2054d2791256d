"""Serving what `voice-models pull` fetched: the tiny Spark checkpoint pulled from the Hub stand-in into a models folder
is found there by the real launcher (beside a broken checkpoint it reports and skips) and speaks through the real
gateway (asked with voice-cli, as the README tells users to clone a voice);
and `make run` (deploy/local/run_stack.py) hands the pulled RVC folder to the conversion service and names the
models it found incomplete.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import tritonclient.grpc as triton_grpc

from tests.deploy.test_supervisor import run_stack  # noqa: F401 - the fixture loading deploy/local/run_stack.py
from tests.fixtures.spark import start_spark_gateway
from tests.fixtures.triton_server import start_triton, tiny_params
from tests.models.conftest import Cli
from tests.spark.helpers import RATE, speech_like
from tests.waiting import wait_until
from voice_triton import registry

VOICE_CLI = Path(sys.executable).parent / "voice-cli"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_pulled_checkpoint_is_served_and_clones_a_voice_while_a_broken_one_is_reported(
    cli: Cli, models_dir: Path, rvc_service: Any, tmp_path: Path
) -> None:
    """One server for two launcher behaviours: a checkpoint pulled into the models folder is found under its
    registered name and serves; a checkpoint whose files are all there but hold no weights fails to load, is
    reported by backend name and unloaded whole, and the other backends still serve."""
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    broken = registry.get("orpheus")
    assert broken.layout is not None
    for entry in broken.layout.required:  # every file the launcher's check looks for, none a loader can read
        path = models_dir / broken.models_dir_name / entry.split("|")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"model_type": "llama"}')
    reference = tmp_path / "reference.wav"
    sf.write(reference, speech_like(2.5, f0=150.0, seed=9), RATE, subtype="PCM_16")
    log = tmp_path / "tritonserver.log"
    with start_triton(log, models_dir=models_dir, params=tiny_params(["spark"])) as triton:
        # Ready for clients before the launcher has checked every backend: its report ends with the ready line.
        wait_until(lambda: "triton ready" in log.read_text(errors="replace"), within=30, what="the launcher's report")
        client = triton_grpc.InferenceServerClient(triton.grpc_url)
        assert client.is_server_ready() and client.is_model_ready("piper_tts")
        assert all(client.is_model_ready(model) for model in registry.get("spark").models)
        assert not client.is_model_ready(broken.entry_model)
        text = log.read_text(errors="replace")
        assert f"backend orpheus: not served: failed to load: {broken.entry_model}:" in text
        assert next(line for line in text.splitlines() if line.startswith("triton ready")).endswith(
            "backends=piper,pocketsphinx,spark"
        )
        gateway = start_spark_gateway(triton, rvc_service.address, tmp_path)
        try:
            out = tmp_path / "cloned.wav"
            said = subprocess.run(
                [str(VOICE_CLI), "--target", gateway.address, "say", "Hello from a pulled checkpoint.",
                 "--voice", "spark", "--reference", str(reference), "--reference-text", "some words",
                 "--seed", "7", "-q", "-o", str(out)],
                capture_output=True, text=True, timeout=240,
            )  # fmt: skip
            # Piper, beside the broken backend, still answers.
            piper = subprocess.run(
                [str(VOICE_CLI), "--target", gateway.address, "say", "Still serving.", "--voice", "joe", "-q",
                 "-o", str(tmp_path / "joe.wav")],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            gateway.stop()
    assert said.returncode == 0, said.stderr
    audio, rate = sf.read(out)
    assert rate == RATE and audio.size > RATE // 10  # random weights: noise, but the whole path ran
    assert piper.returncode == 0, piper.stderr
    joe, joe_rate = sf.read(tmp_path / "joe.wav")
    assert joe_rate == 22050 and joe.size > joe_rate // 4


def test_run_stack_hands_over_the_rvc_folder_and_names_incomplete_models(
    run_stack: Any,  # noqa: F811 - the imported fixture
    cli: Cli,
    models_dir: Path,
) -> None:
    assert run_stack.rvc_models_flags(models_dir) == []  # nothing pulled: the service's own default
    assert cli("pull", "rvc-base").code == 0
    assert run_stack.rvc_models_flags(models_dir) == ["--models-dir", str(models_dir / "rvc")]
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    assert run_stack.incomplete_models(models_dir) == []
    folder = models_dir / "Spark-TTS-0.5B"
    (folder / "LLM" / "model.safetensors").unlink()
    (folder / "LLM" / "merges.txt").unlink()  # not in the layout, but the Hub listed it
    assert run_stack.incomplete_models(models_dir) == [
        f"  spark-tts-0.5b in {folder} is incomplete (missing LLM/merges.txt, LLM/model.safetensors): "
        "`voice-models pull spark-tts-0.5b` completes it"
    ]

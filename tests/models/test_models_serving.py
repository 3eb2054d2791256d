"""Serving what `voice-models pull` fetched: the tiny Spark checkpoint pulled from the Hub stand-in is served by the
real launcher and speaks through the real gateway (asked with voice-cli, as the README tells users to clone a voice);
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

from tests.deploy.test_supervisor import run_stack  # noqa: F401 - the fixture loading deploy/local/run_stack.py
from tests.fixtures.spark import SPARK_MODELS, SPARK_PARAMS, start_spark_gateway
from tests.fixtures.triton_server import start_triton
from tests.models.conftest import Cli
from tests.spark.helpers import RATE, speech_like
from voice_triton import catalog

VOICE_CLI = Path(sys.executable).parent / "voice-cli"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_pulled_checkpoint_is_served_and_clones_a_voice(
    cli: Cli, models_dir: Path, rvc_service: Any, tmp_path: Path
) -> None:
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    # The folder the launcher's --models-dir finds the backend in (its registered name under the models dir).
    checkpoint = catalog.get("spark-tts-0.5b").directory(models_dir)
    reference = tmp_path / "reference.wav"
    sf.write(reference, speech_like(2.5, f0=150.0, seed=9), RATE, subtype="PCM_16")
    with start_triton(
        tmp_path / "tritonserver.log", models=SPARK_MODELS, checkpoints={"spark": checkpoint}, params=SPARK_PARAMS
    ) as triton:
        gateway = start_spark_gateway(triton, rvc_service.address, tmp_path)
        try:
            out = tmp_path / "cloned.wav"
            said = subprocess.run(
                [str(VOICE_CLI), "--target", gateway.address, "say", "Hello from a pulled checkpoint.",
                 "--voice", "spark", "--reference", str(reference), "--reference-text", "some words",
                 "--seed", "7", "-q", "-o", str(out)],
                capture_output=True, text=True, timeout=240,
            )  # fmt: skip
        finally:
            gateway.stop()
    assert said.returncode == 0, said.stderr
    audio, rate = sf.read(out)
    assert rate == RATE and audio.size > RATE // 10  # random weights: noise, but the whole path ran


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

"""`deploy/local/run_stack.py --orpheus-checkpoint DIR --checkpoint spark=DIR`: the stack serves one gateway voice per
Orpheus speaker, at the rate Triton reports, and the Spark voice, both named by the backend registry (the old
spelling and the generic one side by side); and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.deploy.test_run_stack import Stack
from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SPEAKERS = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")


def test_run_stack_serves_orpheus_voices(tmp_path: Path, orpheus_checkpoint: Path, spark_checkpoint: Path) -> None:
    stack = Stack(
        tmp_path, "--orpheus-checkpoint", str(orpheus_checkpoint), "--checkpoint", f"spark={spark_checkpoint}"
    )
    try:
        stack.wait_up()
        assert "orpheus_tts" in stack.output() and "spark_tts" in stack.output()
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports['gateway-port']}") as channel:
            stub = tts_gateway_pb2_grpc.TtsGatewayServiceStub(channel)
            voices = {v.name: v for v in stub.ListVoices(tts_gateway_pb2.ListVoicesRequest()).voices}
            for speaker in SPEAKERS:
                voice = voices[f"orpheus-{speaker}"]
                assert voice.native_sample_rate_hz == 24000 and voice.available and voice.speakers[0] == speaker
            assert "joe" in voices  # the shipped voices stay
            assert voices["spark"].native_sample_rate_hz == 16000 and voices["spark"].available
            request = tts_gateway_pb2.SynthesizeRequest(
                voice="orpheus-zoe",
                text="Hello.",
                seed=3,
                output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16),
            )
            audio = b"".join(chunk.audio for chunk in stub.Synthesize(request, timeout=120))
        samples = np.frombuffer(audio, dtype="<i2")
        assert samples.size > 0 and samples.size % 2048 == 0  # whole SNAC frames at 24 kHz
        rest = stack.interrupt()
    finally:
        stack.kill()
    assert stack.process.returncode == 0, rest

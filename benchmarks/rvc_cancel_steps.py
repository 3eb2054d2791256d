"""Longest uninterruptible step of each conversion engine: the bound on how long a job runs after its cancel.

The engines check their `should_stop` callable between steps and inside loops (issue 9, item 5). This runs one
conversion per case with a `should_stop` that records the calling thread's CPU time at every check, and prints the
longest gap (CPU time, so other processes on a busy machine do not inflate it) next to the whole job's CPU time.
Cases: WORLD (DIO, Harvest) and a tiny random-weight RVC v2 model in the real format (F0 methods pm, dio, harvest,
crepe-tiny, fcpe), on a streaming window (0.5 s context + 0.5 s block + look-ahead) and on a ConvertClip window
(1 s context + 8 s block).

    .venv/bin/python benchmarks/rvc_cancel_steps.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

from services.rvc_service.engines import BUILTIN_VOICES, ConversionParams, RvcModel, VoiceModel  # noqa: E402  (after the warning filter)
from tests.signals import gliding_voice  # noqa: E402  (after the warning filter)

STREAM_WINDOW_S = 1.055
CLIP_WINDOW_S = 9.0


def measure(voice: VoiceModel, rate: int, seconds: float, params: ConversionParams) -> tuple[float, float, int]:
    audio = gliding_voice(rate, seconds)
    voice.convert_block(audio, rate, params, context=0)  # warm-up: imports, lazily loaded F0 models
    stamps: list[float] = []

    def should_stop() -> bool:
        stamps.append(time.thread_time())
        return False

    start = time.thread_time()
    voice.convert_block(audio, rate, params, context=0, should_stop=should_stop)
    end = time.thread_time()
    gaps = np.diff([start, *stamps, end])
    return end - start, float(gaps.max()), len(stamps)


def main() -> None:
    import torch

    torch.set_num_threads(1)  # what one worker gets on a 2-core host
    d = Path(tempfile.mkdtemp(prefix="rvc-steps-"))
    from tests.rvc.factories import write_checkpoint, write_hf_hubert

    write_hf_hubert(d / "hubert")
    write_checkpoint(d / "tiny.pth", "v2", True, 40000)
    rvc = RvcModel.load(d / "tiny.pth", content_encoder=d / "hubert")
    world = BUILTIN_VOICES["world-default"]
    cases: list[tuple[str, VoiceModel, int, ConversionParams]] = [
        ("world dio", world, 24000, ConversionParams(pitch_shift_semitones=4, formant_shift_semitones=1.5)),
        ("world harvest", world, 24000, ConversionParams(pitch_shift_semitones=4, f0_method="harvest")),
    ]
    for method in ("pm", "dio", "harvest", "crepe-tiny", "fcpe"):
        cases.append((f"rvc-tiny {method}", rvc, 16000, ConversionParams(f0_method=method, index_rate=0.0)))
    print(f"{'case':<20} {'window':>7} {'job CPU ms':>11} {'longest step ms':>16} {'checks':>7}")
    for name, voice, rate, params in cases:
        for seconds in (STREAM_WINDOW_S, CLIP_WINDOW_S):
            total, longest, checks = measure(voice, rate, seconds, params)
            print(f"{name:<20} {seconds:>6.2f}s {1000 * total:>11.0f} {1000 * longest:>16.0f} {checks:>7}", flush=True)


if __name__ == "__main__":
    main()

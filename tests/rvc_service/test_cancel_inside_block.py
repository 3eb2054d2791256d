"""A running conversion job stops soon after its cancel token is set, inside the block rather than after it (issue 9,
item 5): real engines (WORLD and a tiny RVC model in the WebUI format) on several seconds of speech-like audio,
through the real worker pool.

Timings are ratios against the same job's uncancelled run measured in the same test, so a busy machine slows both
sides alike: at the speed of a quiet 2-core machine the bounds below are about 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.rvc_service.cancel import CancelToken, JobCancelled
from services.rvc_service.engines import BUILTIN_VOICES, ConversionParams, RvcModel, VoiceModel
from services.rvc_service.pool import WorkerPool
from tests.signals import gliding_voice

factories = pytest.importorskip("tests.rvc.factories")

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SECONDS = 6.0
# A cancel must end the job within this share of its uncancelled run time, or 100 ms if that is more. Before, the job
# ran to its end: ~55% of its run time after a cancel at 45%. WORLD's steps are cut to tens of ms whatever the input
# length; the RVC decoder's last upsampling stage is one torch call over the whole window (~2-3% of the run here,
# ~30 ms on a streaming window), hence its wider share.
WORLD_SHARE = 0.06
RVC_SHARE = 0.15
FLOOR_S = 0.1


@pytest.fixture(scope="module")
def rvc_voice(tmp_path_factory: pytest.TempPathFactory) -> RvcModel:
    d = tmp_path_factory.mktemp("cancel_models")
    factories.write_hf_hubert(d / "hubert")
    factories.write_checkpoint(d / "alto.pth", "v2", True, 40000)
    return RvcModel.load(d / "alto.pth", content_encoder=d / "hubert")


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    p = WorkerPool(1, 4, device="cpu", threads_per_worker=1)
    yield p
    p.close(timeout=30)


class StepClock:
    """A should_stop that also records when it is asked, in the worker thread's CPU time (so other processes on a
    busy machine do not stretch the gaps): the longest gap is the engine's longest uninterruptible step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self) -> bool:
        self.stamps.append(time.thread_time())
        return False


def job_for(
    voice: VoiceModel, audio: np.ndarray, rate: int, params: ConversionParams, ended: list[tuple[float, float]]
):
    def job(token: CancelToken | StepClock) -> np.ndarray:
        try:
            return voice.convert_block(audio, rate, params, context=0, should_stop=token)
        finally:
            ended.append((time.perf_counter(), time.thread_time()))

    return job


async def cancel_mid_run(
    pool: WorkerPool, voice: VoiceModel, audio: np.ndarray, rate: int, params: ConversionParams
) -> tuple[float, float, float]:
    """(uncancelled run time, longest step in CPU time, wall time from cancel to the job's end) for one voice."""
    ended: list[tuple[float, float]] = []
    job = job_for(voice, audio, rate, params, ended)
    await pool.run(job, model=voice.name)  # warm-up: imports, first-call allocations
    clock = StepClock()
    full = await pool.run(lambda _token: job(clock), model=voice.name, audio_seconds=SECONDS)
    steps = np.diff([*clock.stamps, ended[-1][1]])
    run_s, longest_step = full.run_seconds, float(steps.max())

    token = CancelToken()
    task = asyncio.create_task(pool.run(job, model=voice.name, token=token))
    await asyncio.sleep(0.45 * run_s)  # the cancel point under test: mid-run, well inside the job
    assert not task.done(), "the job ended before the cancel: the input is too short to test anything"
    cancelled_at = time.perf_counter()
    token.cancel("test cancel")
    with pytest.raises(JobCancelled):
        await task
    latency = ended[-1][0] - cancelled_at

    # The worker is free again: the next job starts at once.
    after = await pool.run(lambda _t: "next", model=voice.name)
    assert after.value == "next" and after.wait_seconds < 0.05 and pool.stats().busy == 0
    return run_s, longest_step, latency


def assert_prompt(name: str, run_s: float, longest_step: float, latency: float, share: float) -> None:
    bound = max(FLOOR_S, share * run_s)
    report = f"{name}: run {run_s:.3f} s, longest step {longest_step:.3f} s, cancel -> end {latency:.3f} s"
    print(report)
    assert latency < bound, report
    assert longest_step < bound, report


async def test_world_job_stops_inside_the_block(pool: WorkerPool) -> None:
    voice = BUILTIN_VOICES["world-default"]
    params = ConversionParams(pitch_shift_semitones=4.0, formant_shift_semitones=1.5)  # joe-world-high's settings
    rate = voice.sample_rate
    run_s, longest, latency = await cancel_mid_run(pool, voice, gliding_voice(rate, SECONDS), rate, params)
    assert_prompt("world-default (dio)", run_s, longest, latency, WORLD_SHARE)


async def test_rvc_job_stops_inside_the_block(pool: WorkerPool, rvc_voice: RvcModel) -> None:
    params = ConversionParams(f0_method="dio", index_rate=0.0)
    run_s, longest, latency = await cancel_mid_run(pool, rvc_voice, gliding_voice(16000, SECONDS), 16000, params)
    assert_prompt("rvc tiny v2 (dio)", run_s, longest, latency, RVC_SHARE)


def test_long_world_synthesis_in_pieces_matches_one_call() -> None:
    """The pieces a long synthesis is cut into pulse in phase with each other: on a steady voiced tone (no voicing
    edges, where float rounding may move a pulse by a sample) the result is the single-call synthesis up to WORLD's
    noise excitation. Pieces synthesized without the phase lead-in would be out of step (about 0 dB)."""
    import pyworld

    from services.rvc_service.engines.world import FRAME_MS, SYNTH_FRAMES_PER_CALL, WORK_SR, synthesize

    x = factories.harmonic_tone(150.0, WORK_SR, 4.0, harmonics=12).astype(np.float64)
    f0, t = pyworld.dio(x, WORK_SR, frame_period=FRAME_MS)
    f0 = pyworld.stonemask(x, f0, t, WORK_SR) * 2 ** (4 / 12)
    sp = pyworld.cheaptrick(x, f0, t, WORK_SR)
    ap = pyworld.d4c(x, f0, t, WORK_SR)
    assert len(f0) > 3 * SYNTH_FRAMES_PER_CALL  # several pieces
    checks: list[float] = []
    pieces = synthesize(f0, sp, ap, lambda: checks.append(1.0) or False)
    whole = pyworld.synthesize(f0, sp, ap, WORK_SR, FRAME_MS)
    assert len(checks) >= 3 and pieces.shape == whole.shape
    core = slice(WORK_SR // 10, -WORK_SR // 10)  # the tone's own onset and end are not steady
    snr_db = 10 * np.log10(np.sum(whole[core] ** 2) / np.sum((pieces[core] - whole[core]) ** 2))
    assert snr_db > 30, snr_db

"""Each engine step consults `should_stop` inside itself and stops at the next check once it turns true (issue 9,
item 5): the content encoders per layer (HF and fairseq), the synthesizer per layer/flow/residual block, the F0
trackers per sub-block, WORLD per step and slice. Real tiny models in the real formats (factories.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.rvc_service.cancel import JobCancelled
from services.rvc_service.engines import BUILTIN_VOICES, ContentEncoder, ConversionParams, RvcModel
from tests.rvc.factories import harmonic_tone


class StopAfter:
    """should_stop that turns true at its n-th call and counts every call."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.n is not None and self.calls >= self.n


@pytest.mark.parametrize("encoder", ["hf", "fairseq"])
def test_content_encoder_checks_every_layer(encoder: str, request: pytest.FixtureRequest) -> None:
    enc: ContentEncoder = request.getfixturevalue(f"{encoder}_encoder")
    audio = torch.from_numpy(harmonic_tone(seconds=1.0))[None]
    counter = StopAfter()
    enc.extract(audio, "v2", counter)
    assert counter.calls >= 7 + 2  # 7 feature-extractor convolutions + 2 transformer layers in the tiny encoders
    stop = StopAfter(3)
    with pytest.raises(JobCancelled):
        enc.extract(audio, "v2", stop)
    assert stop.calls == 3  # stopped at the check that said so, no further layer ran
    enc.extract(audio, "v2")  # the hooks of another call see no cancel check: a plain call still works


def test_rvc_convert_block_checks_inside_the_synthesizer(model_dir: Path, hf_encoder, f0_estimator) -> None:
    model = RvcModel.load(model_dir / "alto.pth", content_encoder=hf_encoder, f0_estimator=f0_estimator)
    x = harmonic_tone(seconds=1.1)
    params = ConversionParams(f0_method="pm")
    counter = StopAfter()
    model.convert_block(x, 16000, params, context=8000, should_stop=counter, seed=0)
    total = counter.calls
    assert total >= 20  # steps + encoder layers + attention layers + flows + decoder blocks
    # A cancel at every possible check stops the call there (never runs to the end, never ignores it).
    for n in (1, total // 3, 2 * total // 3, total):
        stop = StopAfter(n)
        with pytest.raises(JobCancelled):
            model.convert_block(x, 16000, params, context=8000, should_stop=stop, seed=0)
        assert stop.calls == n


def test_world_checks_scale_with_input_length() -> None:
    voice = BUILTIN_VOICES["world-default"]
    params = ConversionParams(pitch_shift_semitones=4.0, formant_shift_semitones=1.5)
    counts = []
    for seconds in (1.0, 4.0):
        counter = StopAfter()
        voice.convert(harmonic_tone(150.0, 24000, seconds, harmonics=10), 24000, params, should_stop=counter)
        counts.append(counter.calls)
    assert counts[1] > 3 * counts[0] > 0  # sub-blocks and slices: checks grow with the work, steps stay short
    stop = StopAfter(counts[1] // 2)
    with pytest.raises(JobCancelled):
        voice.convert(harmonic_tone(150.0, 24000, 4.0, harmonics=10), 24000, params, should_stop=stop)


def test_f0_tracker_sub_blocks_match_one_call_on_a_steady_voice(f0_estimator) -> None:
    """Harvest/DIO in 1 s sub-blocks with 0.25 s margins give the whole-signal contour on voiced audio."""
    import pyworld

    x = harmonic_tone(180.0, 16000, 4.0, harmonics=8)
    for method in ("dio", "harvest"):
        blocks = f0_estimator.estimate(x, method, filter_radius=0, should_stop=lambda: False)
        xd = x.astype(np.float64)
        fn = pyworld.harvest if method == "harvest" else pyworld.dio
        whole, t = fn(xd, 16000, f0_floor=50.0, f0_ceil=1100.0, frame_period=10.0)
        whole = pyworld.stonemask(xd, whole, t, 16000)[: len(blocks)]
        core = slice(10, -10)
        assert np.median(np.abs(blocks[core] - whole[core])) < 0.5, method
        assert np.mean(np.abs(blocks[core] - whole[core]) < 2.0) > 0.97, method

"""The CosyVoice2 streaming token2wav engine (voice_triton.cosyvoice2.token2wav) on tiny random flow and HiFT models:
the published chunk schedule, exact audio length, determinism, and the seams against one whole decode.

The tiny models are the parity tests' architectures (tests/cosyvoice2/test_flow_parity.py, test_hift_parity.py) with
a narrower flow encoder (ours allows it; upstream hard-codes 512) so a stream decodes in about a second."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.cosyvoice2.test_hift_parity import PUBLISHED as PUBLISHED_HIFT
from tests.cosyvoice2.test_hift_parity import TINY as TINY_HIFT
from tests.cosyvoice2.test_hift_parity import _trained_like_weights
from voice_triton.cosyvoice2.flow import PUBLISHED_FLOW, CausalMaskedDiffWithXvec, build_flow
from voice_triton.cosyvoice2.hift import ConvRNNF0Predictor, HiFTGenerator
from voice_triton.cosyvoice2.token2wav import Token2WavSchedule, Token2WavStream, samples_for_tokens

SAMPLES_PER_TOKEN = 960  # 2 mel frames of 480 samples at 24 kHz
CACHE = 8 * 480  # held-back samples of a non-final chunk (the source cache and the cross-fade)
WIDTH = 128

TINY_FLOW: dict[str, Any] = {
    **PUBLISHED_FLOW,
    "input_size": WIDTH,
    "encoder": {
        **PUBLISHED_FLOW["encoder"],
        "input_size": WIDTH,
        "output_size": WIDTH,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
    },
    "decoder": {
        **PUBLISHED_FLOW["decoder"],
        "estimator": {
            **PUBLISHED_FLOW["decoder"]["estimator"],
            "channels": [64],
            "attention_head_dim": 16,
            "n_blocks": 1,
            "num_mid_blocks": 1,
            "num_heads": 2,
        },
    },
}


@pytest.fixture(scope="module")
def models() -> tuple[CausalMaskedDiffWithXvec, HiFTGenerator]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = build_flow(TINY_FLOW).eval()
        full = {**PUBLISHED_HIFT, **TINY_HIFT}
        hift = HiFTGenerator(**full, f0_predictor=ConvRNNF0Predictor(1, 80, full["base_channels"])).eval()
    hift.load_state_dict(_trained_like_weights(hift, seed=3), strict=True)  # voiced and unvoiced frames
    return flow, hift


def _voice(prompt_tokens: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 6561, (1, prompt_tokens), generator=gen),
        torch.randn(1, 2 * prompt_tokens, 80, generator=gen),
        torch.randn(1, 192, generator=gen),
    )


def _tokens(n: int, seed: int = 2) -> list[int]:
    return torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _stream(
    models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator],
    schedule: Token2WavSchedule | None = None,
    prompt_tokens: int = 10,
    seed: int = 5,
) -> Token2WavStream:
    flow, hift = models
    return Token2WavStream(flow, hift, *_voice(prompt_tokens), schedule, generator=torch.Generator().manual_seed(seed))


def _run_one_by_one(stream: Token2WavStream, tokens: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Feed tokens singly; the chunks, and how many tokens had arrived when each non-final chunk came out."""
    chunks, arrivals = [], []
    for count, token in enumerate(tokens, start=1):
        ready = stream.add([token])
        chunks += ready
        arrivals += [count] * len(ready)
    chunks.append(stream.finish())
    return chunks, arrivals


def test_schedule_is_the_published_one() -> None:
    schedule = Token2WavSchedule()
    assert [schedule.hop(k) for k in range(6)] == [15, 25, 50, 100, 200, 400]  # uncapped, as the runtime
    assert (schedule.pre_lookahead_tokens, schedule.n_timesteps, schedule.mel_cache_frames) == (3, 10, 8)
    assert [Token2WavSchedule(max_hop_tokens=100).hop(k) for k in range(5)] == [15, 25, 50, 100, 100]
    # Upstream CosyVoice2Model.tts: 25-token hops, the first lengthened by the prompt's padding to a multiple of 25.
    upstream = Token2WavSchedule(first_hop_tokens=25, hop_scale=1, align_first_hop=True)
    assert [upstream.hop(k, prompt_tokens=10) for k in range(3)] == [40, 25, 25]
    assert upstream.hop(0, prompt_tokens=50) == 25
    with pytest.raises(ValueError, match="hop_tokens"):
        Token2WavSchedule(hop_tokens=0)
    with pytest.raises(ValueError, match="max_hop_tokens"):
        Token2WavSchedule(max_hop_tokens=10)


def test_chunks_follow_the_schedule_and_length_is_exact(
    models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator],
) -> None:
    n = 130
    stream = _stream(models)
    chunks, arrivals = _run_one_by_one(stream, _tokens(n))
    assert stream.chunk_hops == [15, 25, 50]  # the next hop (100) would need 190 + 3 tokens
    # A chunk comes out as soon as its tokens and the 3 lookahead tokens exist.
    assert arrivals == [15 + 3, 40 + 3, 90 + 3]
    sizes = [c.size for c in chunks]
    # The first chunk holds back 3840 samples for the join; the final chunk gives them back.
    hops = [15, 25, 50, 40]
    assert sizes == [
        hops[0] * SAMPLES_PER_TOKEN - CACHE,
        *(h * SAMPLES_PER_TOKEN for h in hops[1:-1]),
        hops[-1] * SAMPLES_PER_TOKEN + CACHE,
    ]
    assert sum(sizes) == n * SAMPLES_PER_TOKEN == samples_for_tokens(n, *models)
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    with pytest.raises(RuntimeError, match="finished"):
        stream.add([1])


@pytest.mark.parametrize("n", [0, 1, 17, 18, 44])
def test_length_is_exact_for_any_token_count(models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator], n: int) -> None:
    stream = _stream(models)
    chunks, _ = _run_one_by_one(stream, _tokens(n))
    assert sum(c.size for c in chunks) == n * SAMPLES_PER_TOKEN
    naive = _stream(models, Token2WavSchedule(cross_fade=False))
    naive_chunks, _ = _run_one_by_one(naive, _tokens(n))
    assert [c.size for c in naive_chunks] == [h * SAMPLES_PER_TOKEN for h in naive.chunk_hops] + [
        (n - sum(naive.chunk_hops)) * SAMPLES_PER_TOKEN
    ]


def test_short_utterance_is_one_whole_decode(models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator]) -> None:
    """Fewer tokens than the first hop + lookahead: nothing streams, and finish() is exactly the whole decode."""
    tokens = _tokens(17)
    stream = _stream(models, seed=9)
    assert stream.add(tokens) == []
    np.testing.assert_array_equal(stream.finish(), stream.whole(tokens, torch.Generator().manual_seed(9)))


def test_deterministic_under_a_seed_and_independent_of_arrival(
    models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator],
) -> None:
    tokens = _tokens(60)
    first = np.concatenate(_run_one_by_one(_stream(models, seed=5), tokens)[0])
    again = np.concatenate(_run_one_by_one(_stream(models, seed=5), tokens)[0])
    np.testing.assert_array_equal(first, again)
    batched = _stream(models, seed=5)  # all tokens in one add(): the same chunks, in one call
    at_once = np.concatenate([*batched.add(tokens), batched.finish()])
    assert batched.chunk_hops == [15, 25]
    np.testing.assert_array_equal(at_once, first)
    other = np.concatenate(_run_one_by_one(_stream(models, seed=6), tokens)[0])
    assert float(np.abs(other - first).max()) > 1e-4  # the seed drives HiFT's excitation noise


def test_schedule_must_match_the_flow(models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator]) -> None:
    with pytest.raises(ValueError, match="pre_lookahead"):
        _stream(models, Token2WavSchedule(pre_lookahead_tokens=2))
    with pytest.raises(ValueError, match="mel cache"):
        _stream(models, Token2WavSchedule(first_hop_tokens=3))


@pytest.mark.parametrize("prompt_tokens", [10, 7, 0])
def test_emitted_mel_equals_one_streaming_pass_when_chunks_align(
    models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator], prompt_tokens: int
) -> None:
    """Why chunk ends matter: re-running the flow over all tokens with static-chunk attention reproduces the frames
    already emitted only when (prompt + emitted) tokens end on the encoder's 25-token chunks. With the runtime's
    15/25/50 hops that holds for a 10-token prompt (25, 50, 100); other prompts leave a mel mismatch at each seam."""
    flow, _ = models
    prompt = _voice(prompt_tokens)
    token = torch.tensor([_tokens(130)])
    one_pass = flow.inference(token, *prompt, streaming=True, finalize=True)
    diffs = []
    for end in (15, 40, 90):
        chunk = flow.inference(token[:, : end + 3], *prompt, streaming=True, finalize=False)
        diffs.append(float((chunk - one_pass[:, :, : 2 * end]).abs().max()))
    level = float(one_pass.abs().max())
    print(f"prompt={prompt_tokens}: max|mel(chunk run) - mel(one streaming pass)| at ends 15/40/90 = {diffs}")
    if (prompt_tokens + 15) % 25 == 0:
        assert max(diffs) < 1e-5 * level
    else:
        assert min(diffs) > 1e-3 * level


def test_seams_against_one_whole_decode(models: tuple[CausalMaskedDiffWithXvec, HiFTGenerator]) -> None:
    """The seam test: the stream against one whole decode of the same tokens (same flow noise, same HiFT seed).

    The tiny random models give noise-like audio (its largest sample step is about 4-5x its RMS), and streamed and
    whole decodes differ everywhere (static-chunk vs full attention in the flow; HiFT's excitation phases drawn per
    chunk). So what is asserted is what stays meaningful: the audio near a seam is no further from the whole decode
    than the audio away from seams, and no step at or around a seam exceeds the largest step of the whole decode.
    The figures are printed for the notes."""
    n = 130
    tokens = _tokens(n)
    whole = _stream(models).whole(tokens, torch.Generator().manual_seed(5))
    level = float(np.sqrt(np.mean(whole**2)))
    whole_step = float(np.abs(np.diff(whole)).max())
    window = 2 * SAMPLES_PER_TOKEN  # ±2 tokens

    def measure(schedule: Token2WavSchedule, label: str) -> tuple[float, float, float]:
        chunks, _ = _run_one_by_one(_stream(models, schedule), tokens)
        audio = np.concatenate(chunks)
        assert audio.size == whole.size == n * SAMPLES_PER_TOKEN
        seams = np.cumsum([c.size for c in chunks])[:-1]
        near = np.zeros(audio.size, dtype=bool)
        seam_errors, steps, boundary_errors = [], [], []
        for s in seams:
            around = slice(max(0, s - window), s + window)  # ±2 tokens of the chunk boundary
            boundary_errors.append(float(np.sqrt(np.mean((audio[around] - whole[around]) ** 2))) / level)
            # The join spans the chunk boundary s and the end of the cross-fade s + 3840 (where the new chunk's own
            # excitation takes over from the cached one); both are inside the window measured.
            lo, hi = max(0, s - window), min(audio.size, s + CACHE + window)
            near[lo:hi] = True
            seam_errors.append(float(np.sqrt(np.mean((audio[lo:hi] - whole[lo:hi]) ** 2))) / level)
            steps.append(float(np.abs(np.diff(audio[lo:hi])).max()))
        interior = float(np.sqrt(np.mean((audio[~near] - whole[~near]) ** 2))) / level
        at_boundary = [abs(float(audio[s] - audio[s - 1])) for s in seams]
        print(
            f"{label}: seams at {seams.tolist()} samples; RMS error / signal RMS within ±2 tokens of each seam "
            f"{[round(e, 3) for e in boundary_errors]}, over the whole join (to 2 tokens past the fade) "
            f"{[round(e, 3) for e in seam_errors]}, away from seams {interior:.3f}; step at boundary "
            f"{[round(x, 3) for x in at_boundary]}, largest step near seam {[round(x, 3) for x in steps]}, "
            f"largest step of the whole decode {whole_step:.3f} (signal RMS {level:.3f})"
        )
        return max(*seam_errors, *boundary_errors), interior, max(steps)

    faded_err, faded_interior, faded_step = measure(Token2WavSchedule(), "published (cache + Hamming cross-fade)")
    naive_err, naive_interior, naive_step = measure(Token2WavSchedule(cross_fade=False), "naive (no cache, no fade)")
    assert faded_err <= 1.5 * faded_interior  # the seams are no worse than the rest of the stream
    assert faded_step <= 1.1 * whole_step  # no pop: no step near a seam beyond the whole decode's largest
    assert naive_err <= 2.0 * naive_interior and naive_step <= 1.1 * whole_step  # measured, for comparison
    # The published cross-fade's gain: a Hamming window's two halves sum to about 1.08, not 1.
    w = np.hamming(2 * CACHE)
    gain = w[:CACHE] + w[CACHE:]
    print(f"Hamming cross-fade gain over the overlap: {gain.min():.3f}..{gain.max():.3f}")
    assert 1.07 < gain.min() <= gain.max() < 1.09

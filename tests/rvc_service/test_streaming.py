"""Block-wise streaming with SOLA seams, on the real world engine and through the real worker pool."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from services.common import audio as A
from services.rvc_service.engines import BUILTIN_VOICES, ConversionParams
from services.rvc_service.pool import WorkerPool
from services.rvc_service.streaming import (
    BlockSettings,
    ConversionStream,
    EngineRates,
    SolaStitcher,
    best_offset,
)
from tests.rvc_service.streaming_helpers import convert_offline, seam_inputs

# pyworld imports pkg_resources, which warns on every import.
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")

RATE = 24000  # the world engine's working rate
WORLD = BUILTIN_VOICES["world-default"]
UNEVEN = [5000, 1234, 9000, 333, 2401]


def gliding_tone(seconds: float, rate: int = RATE, amp: float = 0.4) -> np.ndarray:
    """A voiced-like tone whose F0 glides 160..200 Hz, so every block sees a different pitch."""
    t = np.arange(round(seconds * rate)) / rate
    f0 = 180 + 20 * np.sin(2 * np.pi * 1.5 * t)
    return (amp * np.sin(2 * np.pi * np.cumsum(f0) / rate)).astype(np.float32)


def world(params: ConversionParams):
    return lambda audio, context: WORLD.convert_block(audio, RATE, params, context=context)


def seam_jumps(y: np.ndarray, stitcher: SolaStitcher, n_in: int) -> tuple[float, float]:
    """(largest sample-to-sample jump around block seams incl. the crossfade, largest jump elsewhere)."""
    d = np.abs(np.diff(y))
    mask = np.zeros(d.size, dtype=bool)
    for position in seam_inputs(stitcher, n_in):
        seam = round(position * stitcher.out_rate / stitcher.in_rate)
        mask[max(0, seam - 3) : seam + stitcher.crossfade_out + 3] = True
    return float(d[mask].max()), float(d[~mask].max())


def test_identity_engine_passes_audio_through_unchanged_for_any_split() -> None:
    x = gliding_tone(2.37)
    for pieces in ([x.size], [1000], UNEVEN, [17, 4000]):
        y = convert_offline(x, RATE, RATE, lambda a, c: a[c:], pieces=pieces)
        assert y.size == x.size
        np.testing.assert_allclose(y, x, atol=1e-6)


def test_best_offset_finds_known_shift() -> None:
    x = gliding_tone(0.2)
    reference = x[1000:1960]
    assert best_offset(x[1000 - 137 : 1960 + 200], reference) == 137


@pytest.mark.parametrize(
    "first_block_s", [None, 0.06, 0.12], ids=["fixed-blocks", "service-first-block", "longer-first-block"]
)
def test_world_stream_has_no_clicks_at_block_seams_and_keeps_duration(first_block_s: float | None) -> None:
    x = gliding_tone(3.3)
    params = ConversionParams(pitch_shift_semitones=3.0)
    settings = BlockSettings(first_block_s=first_block_s)
    y = convert_offline(x, RATE, RATE, world(params), settings, pieces=UNEVEN)
    stitcher = SolaStitcher(RATE, RATE, settings)
    assert abs(y.size - x.size) <= stitcher.block_in
    at_seams, inside = seam_jumps(y, stitcher, x.size)
    assert at_seams <= 1.2 * inside, f"seam jump {at_seams:.3f} vs in-block {inside:.3f}"

    # The same measure catches clicks when blocks are simply concatenated (no context, no crossfade).
    naive = BlockSettings(context_s=0.0, crossfade_s=0.0, search_s=0.0, first_block_s=first_block_s)
    y_naive = convert_offline(x, RATE, RATE, world(params), naive, pieces=UNEVEN)
    naive_seams, naive_inside = seam_jumps(y_naive, SolaStitcher(RATE, RATE, naive), x.size)
    assert naive_seams > 3 * naive_inside


def test_output_length_tracks_input_for_many_splits_and_rate_changes() -> None:
    for in_rate, out_rate in ((RATE, RATE), (16000, 40000), (16000, 48000), (24000, 22050)):
        for seconds in (0.05, 0.49, 1.0, 2.77):
            n = round(seconds * in_rate)
            stitcher = SolaStitcher(in_rate, out_rate)

            def resampling_identity(audio: np.ndarray, context: int, a: int = in_rate, b: int = out_rate) -> np.ndarray:
                return A.resample(audio[context:], a, b)

            y = convert_offline(np.zeros(n, np.float32), in_rate, out_rate, resampling_identity, pieces=UNEVEN)
            expected = n * out_rate / in_rate
            assert abs(y.size - expected) <= stitcher.search_out + 1, (in_rate, out_rate, seconds, y.size, expected)


@pytest.fixture
def pool():
    pool = WorkerPool(2, 16, device="cpu", threads_per_worker=1)
    yield pool
    pool.close()


async def test_conversion_stream_through_pool_emits_ordered_chunks_and_summary(pool: WorkerPool) -> None:
    x = gliding_tone(2.2, rate=16000)  # client rate differs from the engine's
    params = ConversionParams(pitch_shift_semitones=-2.0)
    stream = ConversionStream(
        pool=pool,
        convert=lambda audio, context, token: WORLD.convert_block(audio, RATE, params, context=context),
        model=WORLD.name,
        key="test-stream",
        request_id="req-1",
        input_rate=16000,
        engine=EngineRates(RATE, RATE),
        output_encoding=A.WAV,
        output_rate=22050,
    )
    chunks = []
    pos = 0
    for i, size in enumerate([3000, 7000, 500, 12000, 2000] * 10):
        if pos >= x.size:
            break
        chunks += [c async for c in stream.push(x[pos : pos + size])]
        pos += size
        if i == 2:
            chunks += [c async for c in stream.flush()]  # mid-stream flush: everything so far comes out
            assert stream.stitcher.pending == 0
    chunks += [c async for c in stream.finish()]
    stream.close()

    assert [c.sequence_number for c in chunks] == list(range(len(chunks)))
    assert all(c.request_id == "req-1" for c in chunks)
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    offset = 0
    for c in chunks:
        assert c.offset.ToNanoseconds() == pytest.approx(offset, abs=1000)
        offset += c.duration.ToNanoseconds()
    total_s = offset / 1e9
    assert total_s == pytest.approx(x.size / 16000, abs=0.5)  # ± one block
    summary = chunks[-1].summary
    assert summary.audio_duration.ToNanoseconds() == pytest.approx(offset, abs=1000)
    assert summary.segment_count == stream.blocks >= 4
    assert summary.conversion_time.ToNanoseconds() > 0
    assert summary.real_time_factor > 0
    # The concatenated chunks are one playable WAV at the requested rate.
    decoded, rate = sf.read(io.BytesIO(b"".join(c.audio for c in chunks)), dtype="float32")
    assert rate == 22050
    assert decoded.size == pytest.approx(total_s * 22050, abs=2)


def test_blocks_start_short_and_grow_to_the_block_size() -> None:
    stitcher = SolaStitcher(RATE, RATE, BlockSettings(block_s=0.5, first_block_s=0.12, block_growth=2.0))
    seams = seam_inputs(stitcher, 5 * RATE)
    blocks = np.diff([0, *seams])
    assert blocks[0] == round(0.12 * RATE)
    assert list(blocks[:3]) == [2880, 5760, 11520] and all(b == 12000 for b in blocks[3:])
    # The first window is taken as soon as the short block and its look-ahead have arrived.
    stitcher.feed(np.zeros(2880 + stitcher.lookahead_in - 1, np.float32))
    assert stitcher.next_window() is None
    stitcher.feed(np.zeros(1, np.float32))
    window = stitcher.next_window()
    assert window is not None and window.new_samples == 2880
    with pytest.raises(ValueError, match="first one included"):
        BlockSettings(first_block_s=0.04).validate()

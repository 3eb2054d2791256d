"""Gateway behaviour a hostile or unlucky client meets, end to end on the real stack: text a model cannot speak,
upstream work stopping promptly on cancel, and no sliver chunks."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.gateway.test_gateway import PARAGRAPH, collect, request, seconds, stub  # noqa: F401  (fixture)
from tests.prometheus import metric, scrape
from tests.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", ".py")


def piper_metric(url: str, name: str) -> float:
    return metric(scrape(url), name, model="piper_tts")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello\x00there.", "control character U+0000"),
        ("Ring the bell\x07 now.", "control character U+0007"),
        ("😀😀🎉", "nothing to speak"),
        ("?!... —", "nothing to speak"),
    ],
    ids=["nul", "bell", "emoji-only", "punctuation-only"],
)
async def test_unspeakable_text_is_invalid_argument_without_internals(stub, text: str, expected: str) -> None:  # noqa: F811
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request(text=text))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert expected in details and not any(leak in details for leak in LEAKS), details


async def test_unspeakable_sentences_inside_speakable_text_are_skipped(stub) -> None:  # noqa: F811
    chunks, _, _ = await collect(stub, request(text="Hello there. 😀😀! 🎉. Goodbye now."))
    summary = chunks[-1].summary
    assert summary.segment_count == 2
    assert "😀" not in summary.processed_text
    assert seconds(summary.audio_duration) > 1.0


@pytest.mark.parametrize("voice", ["joe", "joe-world-high"])
async def test_no_chunk_but_the_last_is_a_sliver(stub, voice: str) -> None:  # noqa: F811
    chunks, _, _ = await collect(stub, request(text=PARAGRAPH, voice=voice))
    durations = [seconds(c.duration) for c in chunks[:-1]]
    assert durations and min(durations) >= 0.02, sorted(durations)[:5]
    assert max(durations) <= 0.5 + 1e-6


async def test_cancel_stops_the_sentence_in_synthesis_at_once(stub, triton_server) -> None:  # noqa: F811
    # A short lead-in, then one long sentence that takes Piper well over a second to synthesize on this machine.
    long_sentence = " ".join(["and the river ran on past the old mill towards the sea"] * 6)
    text = f"Here we go. Then {long_sentence}."
    url = triton_server.metrics_url
    cancelled_before = piper_metric(url, "tts_requests_cancelled_total")
    interrupted_before = piper_metric(url, "tts_pieces_interrupted_total")
    pieces_before = piper_metric(url, "tts_pieces_total")
    accepted_before = piper_metric(url, "nv_inference_request_success")
    call = stub.Synthesize(request(text=text), timeout=60)
    first = await call.read()  # the lead-in is out
    assert first is not grpc.aio.EOF
    # The gateway sends one Triton request per sentence; Triton counts a request of this decoupled model as
    # successful when the model has taken it over. Once the second is, the long sentence is in synthesis.
    await async_wait_until(
        lambda: piper_metric(url, "nv_inference_request_success") >= accepted_before + 2,
        within=10,
        interval=0.01,
        what="Triton to take the long sentence",
    )
    # Taken over is queued for the instance's worker, which on a loaded machine may not have begun it yet; the
    # sentence takes well over a second, so a moment later it is surely in synthesis.
    await asyncio.sleep(0.2)
    call.cancel()
    cancelled_at = time.monotonic()
    await async_wait_until(
        lambda: piper_metric(url, "tts_requests_cancelled_total") > cancelled_before,
        within=5,
        interval=0.01,
        what="Triton to see the cancel",
    )
    reaction = time.monotonic() - cancelled_at
    print(f"Triton saw the cancel and stopped after {reaction * 1000:.0f} ms")
    # The long sentence was stopped mid-inference, not finished for nobody.
    assert piper_metric(url, "tts_pieces_interrupted_total") == interrupted_before + 1
    assert piper_metric(url, "tts_pieces_total") == pieces_before + 1  # only the lead-in was synthesized
    # Within 100 ms of the cancel on an idle host; the poll loop and a busy CI core add their share.
    assert reaction < 0.3, f"Triton took {reaction * 1000:.0f} ms to stop"

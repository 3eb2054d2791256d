"""The clients honour RetryInfo: a call refused with RESOURCE_EXHAUSTED or UNAVAILABLE and a RetryInfo delay, before
any response message, is retried after that delay (capped, at most --max-retries times, never past the deadline).

Two servers: a fake of the gateway's overload response (tests/clients/fake_gateway.py: a real gRPC server on a free
loopback port that refuses the first N calls the way the gateway's admission control does, trailer and all, then
serves), which makes counts and delays exact; and the real gateway with --max-concurrent-streams=1 held full by one
stream.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.clients.audio_checks import assert_speech_like, read_finalized_wav
from tests.clients.conftest import VOICE_CLI, client_env
from tests.clients.fake_gateway import SAMPLE_RATE, FakeOverloadedGateway, Refusal, status_trailer
from voice.v1 import audio_pb2
from voice_client import RetryNotice, SynthesisOptions, TtsClient, describe_rpc_error, retry_delay_seconds
from voice_client.client import jittered_delay


def synthesize_all(client: TtsClient, **kwargs: Any) -> list[audio_pb2.AudioChunk]:
    return list(client.synthesize("Hello.", "fake", encoding="wav", **kwargs))


def test_refused_twice_then_served(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.3), Refusal(grpc.StatusCode.UNAVAILABLE, retry_after_s=0.2)]
    notices: list[RetryNotice] = []
    with TtsClient(target, timeout=30, on_retry=notices.append) as client:
        chunks = synthesize_all(client)
    assert chunks[-1].is_final and len(servicer.calls) == 3
    gaps = [later - earlier for earlier, later in zip(servicer.calls, servicer.calls[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.2, gaps
    assert [(n.code, n.retry, n.max_retries) for n in notices] == [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1, 3),
        (grpc.StatusCode.UNAVAILABLE, 2, 3),
    ]
    # Never sooner than asked; jittered over [asked, 2 x asked] on the first retry, [asked, 3 x asked] on the second.
    assert 0.3 <= notices[0].delay_s <= 0.6 and notices[0].method == "Synthesize"
    assert 0.2 <= notices[1].delay_s <= 0.6


def test_gives_up_after_max_retries(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.05) for _ in range(3)]
    with TtsClient(target, timeout=30, max_retries=2) as client, pytest.raises(grpc.RpcError) as caught:
        synthesize_all(client)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(servicer.calls) == 3, "the first attempt and two retries"
    assert retry_delay_seconds(caught.value) == pytest.approx(0.05)
    assert "(retry after 0.05 s)" in describe_rpc_error(caught.value)


def test_max_retries_zero_never_retries(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal()]
    with TtsClient(target, timeout=30, max_retries=0) as client, pytest.raises(grpc.RpcError):
        synthesize_all(client)
    assert len(servicer.calls) == 1


def test_each_wait_is_capped(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=3600.0)]
    notices: list[RetryNotice] = []
    with TtsClient(target, timeout=30, max_retry_delay=0.2, on_retry=notices.append) as client:
        started = time.monotonic()
        assert synthesize_all(client)[-1].is_final
    assert time.monotonic() - started < 5.0
    assert [n.delay_s for n in notices] == [0.2]


def test_never_waits_past_the_deadline(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=5.0)]
    with TtsClient(target, timeout=2.0) as client, pytest.raises(grpc.RpcError) as caught:
        started = time.monotonic()
        synthesize_all(client)
    assert time.monotonic() - started < 1.0, "a wait that would pass the deadline is not started"
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(servicer.calls) == 1


def test_no_retry_info_or_other_codes_are_not_retried(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(grpc.StatusCode.UNAVAILABLE, retry_after_s=None)]
    with TtsClient(target, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
        synthesize_all(client)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and len(servicer.calls) == 1
    servicer.calls.clear()
    servicer.refusals = [Refusal(grpc.StatusCode.INVALID_ARGUMENT, retry_after_s=0.1)]
    with TtsClient(target, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
        synthesize_all(client)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(servicer.calls) == 1


def test_no_retry_once_audio_arrived(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(after_chunks=1)]
    received: list[audio_pb2.AudioChunk] = []
    with TtsClient(target, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
        for chunk in client.synthesize("Hello.", "fake", encoding="wav"):
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(received) == 1 and len(servicer.calls) == 1, "audio was delivered: a retry would repeat it"


def test_streaming_synthesize_resends_the_text_taken_before_the_refusal(
    fake_gateway: tuple[FakeOverloadedGateway, str],
) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.1), Refusal(retry_after_s=0.1)]
    pieces = ["First sen", "tence. ", "Second ", "one."]
    taken: list[str] = []

    def live_source() -> Iterator[str]:  # a generator can be read only once, like an LLM's token stream
        for piece in pieces:
            taken.append(piece)
            yield piece

    options = SynthesisOptions(voice="fake", encoding="wav")
    with TtsClient(target, timeout=30) as client:
        chunks = list(client.streaming_synthesize(live_source(), options))
    assert chunks[-1].is_final and len(servicer.calls) == 3
    assert taken == pieces, "the source was read once"
    assert servicer.texts == ["".join(pieces)], "the served attempt got the whole text, in order"


def test_unary_calls_are_retried_too(fake_gateway: tuple[FakeOverloadedGateway, str]) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.05)]
    with TtsClient(target, timeout=30) as client:
        assert [v.name for v in client.list_voices()] == ["fake"]
    assert len(servicer.calls) == 2


def run_cli(args: list[str], target: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VOICE_CLI), "--target", target, *args],
        cwd=cwd,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_retries_and_says_so(fake_gateway: tuple[FakeOverloadedGateway, str], tmp_path: Path) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.2), Refusal(retry_after_s=0.2)]
    done = run_cli(["say", "Hello.", "--voice", "fake", "-o", "out.wav"], target, tmp_path)
    assert done.returncode == 0, done.stderr
    retries = [line for line in done.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2 and retries[0].startswith("RESOURCE_EXHAUSTED: "), done.stderr
    assert "(retry 1 of 3)" in retries[0] and "(retry 2 of 3)" in retries[1]
    samples, rate = read_finalized_wav((tmp_path / "out.wav").read_bytes())
    assert rate == SAMPLE_RATE and len(samples) == int(0.6 * SAMPLE_RATE)


def test_cli_max_retries_zero_fails_at_once(fake_gateway: tuple[FakeOverloadedGateway, str], tmp_path: Path) -> None:
    servicer, target = fake_gateway
    servicer.refusals = [Refusal(retry_after_s=0.25)]
    done = run_cli(["say", "Hello.", "--voice", "fake", "-o", "out.wav", "--max-retries", "0"], target, tmp_path)
    assert done.returncode == 6, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voice-cli: error: RESOURCE_EXHAUSTED: "), done.stderr
    assert lines[0].endswith("(retry after 0.25 s)")
    assert list(tmp_path.iterdir()) == []
    bad = run_cli(["say", "Hello.", "--voice", "fake", "-o", "out.wav", "--max-retries", "-1"], target, tmp_path)
    assert bad.returncode == 2 and "--max-retries: must be 0 or more" in bad.stderr


# --------------------------------------------------------------------------------------------------------------------
# The real gateway, held at its limit of one stream
# --------------------------------------------------------------------------------------------------------------------

LONG_TEXT = " ".join(f"This is sentence number {i} of a stream that holds the only slot." for i in range(30))


@pytest.mark.slow
def test_cli_waits_out_the_real_gateways_overload(gateway_factory: Any, plain_voice: Any, tmp_path: Path) -> None:
    limited = gateway_factory("--max-concurrent-streams=1")
    with TtsClient(limited.address, timeout=120) as holder:
        holding = holder.synthesize(LONG_TEXT, plain_voice.name, encoding="pcm16")
        next(holding)  # admitted and streaming: the gateway's only slot is taken

        say = ["say", "Waited for my turn.", "--voice", plain_voice.name]
        refused = run_cli([*say, "-o", "refused.wav", "--max-retries", "0"], limited.address, tmp_path)
        assert refused.returncode == 6, refused.stderr
        assert refused.stderr.startswith("voice-cli: error: RESOURCE_EXHAUSTED: ")
        assert "(retry after " in refused.stderr and len(refused.stderr.splitlines()) == 1

        process = subprocess.Popen(
            [str(VOICE_CLI), "--target", limited.address, *say, "-o", "served.wav", "--max-retries", "20"],
            cwd=tmp_path,
            env=client_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        lines = [process.stderr.readline()]
        assert "retrying in" in lines[0] and lines[0].startswith("RESOURCE_EXHAUSTED: "), lines
        holding.close()  # cancels the holder's stream: the slot frees and a retry is admitted
        lines += process.stderr.readlines()
        assert process.wait(timeout=120) == 0, lines
    samples, rate = read_finalized_wav((tmp_path / "served.wav").read_bytes())
    assert_speech_like(samples, rate, "Waited for my turn.")
    assert lines[-1].startswith("wrote served.wav"), lines


def test_retry_delays_are_jittered_never_below_the_hint_and_capped() -> None:
    rng = random.Random(1)
    first = [jittered_delay(1.0, 1, cap_s=10.0, rng=rng) for _ in range(2000)]
    assert min(first) >= 1.0 and max(first) <= 2.0
    assert 1.4 < statistics.mean(first) < 1.6, "uniform over the window (full jitter)"
    assert len({round(d, 3) for d in first}) > 500, "clients refused together spread out"
    third = [jittered_delay(1.0, 3, cap_s=10.0, rng=rng) for _ in range(2000)]
    assert max(third) > 4.0 and min(third) >= 1.0, "the window grows with the retry number"
    assert max(jittered_delay(1.0, 10, cap_s=3.0, rng=rng) for _ in range(100)) <= 3.0
    assert jittered_delay(0.4, 2, cap_s=10.0, jitter=0.0) == 0.4


def test_fake_trailer_is_what_the_gateway_sends() -> None:
    """The fake's trailer is built like services/common/errors.py builds it (same google.rpc types, same packing)."""
    from services.common.errors import ResourceExhausted

    real = ResourceExhausted("busy", retry_after_s=0.25).to_status_proto().SerializeToString()
    assert real == status_trailer(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", 0.25)

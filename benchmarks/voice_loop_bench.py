#!/usr/bin/env python3
"""Voice-loop benchmark: speech in, spoken reply out, through the edge's WebSocket /v1/talk, in one run on one stack.

Starts Triton, the conversion service, the gateway and the HTTP edge on free loopback ports (or uses a running stack
given with --edge-url and --gateway). The "speaker" is Piper joe saying known sentences through the gateway,
resampled to 16 kHz PCM16 (what the talk page sends). Measured:

* recognition RTF of each recognition model the gateway serves (ListRecognitionModels; pocketsphinx, and whisper /
  voxtral where Triton serves them, e.g. with --tiny): unary Recognize of the sentences (with pauses), wall time
  over audio seconds, and the WER against the text;
* the loop, per sentence: one /v1/talk session (reply echo) sending the sentence at real time followed by 1 s of
  silence. Parts, from the edge's reply_end timing: end of speech -> final transcript (includes the gateway's
  end-of-utterance silence wait, --end-of-utterance-silence, 0.6 s by default, which no recogniser can beat), final
  transcript -> first reply audio (synthesis time to first audio plus the edge), and end of speech -> first reply
  audio (the loop latency), shown next to the 300 ms target. "Client" is the same loop latency seen by the client:
  from the moment the last speech frame was sent to the reply_start frame (which arrives with the first audio).

"End of speech" at the edge is when it received the audio at the recogniser's result_end_offset (the utterance's
last speech plus a short post-roll).

Run: .venv/bin/python benchmarks/voice_loop_bench.py            (about 3 minutes on 2 cores, stack start included)
     .venv/bin/python benchmarks/voice_loop_bench.py --edge-url http://127.0.0.1:8080 --gateway 127.0.0.1:50051
     .venv/bin/python benchmarks/voice_loop_bench.py --tiny     (adds whisper and voxtral on tiny checkpoints)
     .venv/bin/python benchmarks/voice_loop_bench.py --gateway-flag=--end-of-utterance-silence=0.3
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from benchmarks.listener import percentile
from tests.http_edge.talk_session import MIC_RATE, silence, speak_pcm16, talk
from tests.recognition.wer import corpus_wer
from voice.v1 import audio_pb2, recognition_pb2, recognition_pb2_grpc

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I would like a cup of coffee with milk please.",
    "The weather is going to be sunny and warm tomorrow.",
    "Please call me back when you get home tonight.",
)
TARGET_MS = 300.0


def recognition_rtfs(gateway: str, spoken: list[bytes]) -> list[tuple[str, float, float, float]]:
    """(model, audio s, RTF, WER) of each available recognition model on the sentences joined with 1.2 s pauses."""
    clip = silence(0.5) + b"".join(speech + silence(1.2) for speech in spoken)
    seconds = len(clip) / 2 / MIC_RATE
    rows = []
    with grpc.insecure_channel(gateway) as channel:
        stub = recognition_pb2_grpc.RecognitionServiceStub(channel)
        models = stub.ListRecognitionModels(recognition_pb2.ListRecognitionModelsRequest(), timeout=30).models
        for model in models:
            if not model.available:
                continue
            request = recognition_pb2.RecognizeRequest(
                config=recognition_pb2.RecognitionConfig(model=model.name),
                audio=audio_pb2.AudioInput(
                    audio=clip,
                    format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=MIC_RATE),
                ),
            )
            stub.Recognize(request, timeout=600)  # warm-up
            started = time.perf_counter()
            reply = stub.Recognize(request, timeout=600)
            wall = time.perf_counter() - started
            text = " ".join(result.alternatives[0].transcript for result in reply.results if result.alternatives)
            rows.append((model.name, seconds, wall / seconds, corpus_wer([(" ".join(SENTENCES), text)])))
    return rows


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} {percentile(values, 90):7.0f} {min(values):7.0f} {max(values):7.0f}"


def bench(edge_url: str, gateway: str) -> None:
    spoken = [speak_pcm16(gateway, sentence) for sentence in SENTENCES]
    print(f"\nrecognition (unary Recognize, PCM16 16 kHz, {len(SENTENCES)} sentences)")
    print(f"{'model':<14} {'audio s':>8} {'RTF':>7} {'WER':>6}")
    for name, seconds, rtf, error in recognition_rtfs(gateway, spoken):
        print(f"{name:<14} {seconds:8.1f} {rtf:7.3f} {error:6.3f}")

    url = edge_url.replace("http://", "ws://").rstrip("/") + "/v1/talk"
    talk(url, [spoken[0]], pace=0.0, extra_config={"reply": "echo"})  # warm-up: first synthesis, first recognition
    parts: dict[str, list[float]] = {
        "end of speech -> final transcript": [],
        "final transcript -> first reply audio": [],
        "end of speech -> first reply audio (loop)": [],
        "  client: last speech sent -> reply_start": [],
        "end of speech -> last reply audio": [],
    }
    hypotheses = []
    for speech in spoken:
        result = talk(url, [speech], pace=1.0, tail_s=1.0, extra_config={"reply": "echo"})
        if len(result.replies) != 1 or result.replies[0].end is None:
            print(f"  no reply: {result.events[-3:]}")
            continue
        reply = result.replies[0]
        assert reply.end is not None
        timing = reply.end["timing"]
        hypotheses.append(" ".join(result.finals()))
        parts["end of speech -> final transcript"].append(timing["end_of_speech_to_final_ms"])
        parts["final transcript -> first reply audio"].append(timing["final_to_first_audio_ms"])
        parts["end of speech -> first reply audio (loop)"].append(timing["end_of_speech_to_first_audio_ms"])
        parts["  client: last speech sent -> reply_start"].append(
            (reply.start["_at"] - result.speech_sent_at[0]) * 1000
        )
        parts["end of speech -> last reply audio"].append(timing["total_ms"])
    print(f"\nvoice loop over /v1/talk (echo, joe, sent at real time), {len(hypotheses)} sentences, ms")
    print(f"{'':<44} {'p50':>7} {'p90':>7} {'min':>7} {'max':>7}  target")
    for name, values in parts.items():
        target = f"  {TARGET_MS:.0f} ms" if "(loop)" in name else ""
        if values:
            print(f"{name:<44} {fmt(values)}{target}")
    print(f"loop WER {corpus_wer(list(zip(SENTENCES, hypotheses, strict=False))):.3f}")


TINY_RECOGNIZERS = ("whisper", "voxtral")


@contextmanager
def local_stack(log_dir: Path, gateway_flags: list[str], tiny: bool) -> Iterator[tuple[str, str]]:
    """Triton (with tiny random-weight whisper and voxtral checkpoints when `tiny`), conversion service, gateway and
    edge on free loopback ports; yields (edge URL, gateway address)."""
    from tests.fixtures.gateway import start_gateway
    from tests.fixtures.http_edge import start_http_edge
    from tests.fixtures.rvc_service import start_rvc_service
    from tests.fixtures.triton_server import start_triton, tiny_params, write_tiny_checkpoint
    from voice_triton import registry

    checkpoints: dict[str, Path] = {}
    if tiny:
        (log_dir / "checkpoints").mkdir(exist_ok=True)
        for name in TINY_RECOGNIZERS:
            checkpoints[name] = write_tiny_checkpoint(
                name, log_dir / "checkpoints" / registry.get(name).models_dir_name
            )
    with start_triton(log_dir / "triton.log", checkpoints=checkpoints, params=tiny_params(checkpoints)) as triton:
        rvc = start_rvc_service(log_dir=log_dir)
        gateway = start_gateway(triton.grpc_url, rvc.address, *gateway_flags, log_dir=log_dir)
        edge = start_http_edge(gateway.address, rvc.address, log_dir=log_dir)
        try:
            yield edge.url, gateway.address
        finally:
            edge.stop()
            gateway.stop()
            rvc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge-url", help="use a running edge (with --gateway: the gateway it calls)")
    parser.add_argument("--gateway", help="address of the gateway behind --edge-url")
    parser.add_argument(
        "--gateway-flag", action="append", default=[], help="extra flag for the gateway this script starts"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="also serve whisper and voxtral from tiny random-weight checkpoints (their RTF only: their WER is noise)",
    )
    args = parser.parse_args()
    if bool(args.edge_url) != bool(args.gateway):
        parser.error("--edge-url and --gateway go together")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.perf_counter()
    if args.edge_url:
        bench(args.edge_url, args.gateway)
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="voice-loop-bench-"))
        with local_stack(log_dir, args.gateway_flag, args.tiny) as (edge_url, gateway_address):
            print(f"stack up in {time.perf_counter() - started:.1f} s (logs in {log_dir})")
            bench(edge_url, gateway_address)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

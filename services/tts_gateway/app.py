"""Wiring: flags -> clients, voice catalogue, probe loop, servicer -> ServiceHost."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.channels import add_upstream_credential_options, credentials_from_args
from services.common.contract import GATEWAY_METRICS_PORT, GATEWAY_PORT, RVC_TARGET, TRITON_TARGET, MiB
from services.common.server import (
    EnvArgumentParser,
    ServiceHost,
    add_server_arguments,
    announce_ready,
    init_service_logging,
    server_options_from_args,
)
from services.common.tracing import configure_tracing, shutdown_tracing
from services.tts_gateway.admission import HOST_SOURCES, AdmissionQueue, HostLoad, RealTimeAdmission
from services.tts_gateway.asr_client import TritonAsr
from services.tts_gateway.endpointing import EndpointerSettings
from services.tts_gateway.metrics import SAVED_VOICES, LatencyWindows
from services.tts_gateway.recognition import RecognitionServicer, RecognitionSettings
from services.tts_gateway.rvc_client import RvcClient
from services.tts_gateway.saved_voices import SavedVoiceStore, StoreHealth
from services.tts_gateway.saved_voices_dir import DirectorySavedVoiceStore
from services.tts_gateway.saved_voices_pg import PostgresSavedVoiceStore
from services.tts_gateway.servicer import TtsGatewayServicer
from services.tts_gateway.transcripts import ReferenceTranscripts, TritonRecognizer
from services.tts_gateway.triton_client import TritonTts
from services.tts_gateway.upstreams import UpstreamMonitor
from services.tts_gateway.vad import make_vad
from services.tts_gateway.validation import Limits, ReferenceCache, RequestValidator, saved_reference_prefix
from services.tts_gateway.voices import DEFAULT_VOICES_PATH, VoiceCatalog, load_voice_specs
from voice.v1 import recognition_pb2, recognition_pb2_grpc, tts_gateway_pb2, tts_gateway_pb2_grpc

log = logging.getLogger(__name__)
TRANSCRIPTS_OFF = "off"
SERVICE_NAME = tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"].full_name
RECOGNITION_SERVICE_NAME = recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"].full_name
# A health-check name of its own for the saved-voice store: NOT_SERVING while it cannot be used, while the gateway's
# own service stays SERVING (configured voices still work).
SAVED_VOICES_HEALTH_NAME = f"{SERVICE_NAME}.SavedVoices"


DEFAULT_LIMITS = Limits()


def make_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        description="TTS gateway: streaming synthesis via Triton and voice conversion", env_prefix="GATEWAY"
    )
    add_server_arguments(parser, port=GATEWAY_PORT, metrics_port=GATEWAY_METRICS_PORT)
    parser.add_option("--triton-url", default=TRITON_TARGET, help="Triton gRPC address (host:port)")
    parser.add_option("--rvc-url", default=RVC_TARGET, help="voice-conversion service gRPC address")
    # Per-upstream credentials: bearer token, TLS with an own CA, mTLS client certificate, server-name override.
    add_upstream_credential_options(parser, "triton", "Triton")
    add_upstream_credential_options(parser, "rvc", "the voice-conversion service")
    parser.add_option("--voices", type=Path, default=DEFAULT_VOICES_PATH, help="voices file (TOML or JSON)")
    parser.add_option(
        "--max-concurrent-streams",
        type=int,
        default=96,
        help="synthesis calls held at once, streaming or waiting in the admission queue; more get RESOURCE_EXHAUSTED "
        "at once",
    )
    parser.add_option(
        "--admission-queue-length",
        type=int,
        default=64,
        help="streams that may wait for real-time capacity (first come first served per caller or voice, served "
        "in turns, the least served first); when full, RESOURCE_EXHAUSTED with a retry delay; 0 refuses at once "
        "what does not fit",
    )
    parser.add_option(
        "--admission-max-wait",
        type=float,
        default=10.0,
        help="longest a stream waits in the admission queue (and never past its call's deadline), seconds",
    )
    parser.add_option(
        "--admission-host-load",
        default="auto",
        choices=list(HOST_SOURCES),
        help="how the host's CPU saturation is read to scale the target load down: psi (/proc/pressure/cpu), "
        "proc_stat, process_times (this process only), off; auto: the first of those that works",
    )
    parser.add_option(
        "--admission-target-load",
        type=float,
        default=0.8,
        help="admit a stream only while the measured model predicts every admitted stream produces audio in at most "
        "this many seconds per second of audio (below 1 keeps headroom); 0 turns real-time admission off",
    )
    parser.add_option(
        "--admission-cold-start-streams",
        type=int,
        default=2,
        help="streams of a voice admitted at once before its real-time cost has been measured",
    )
    parser.add_option(
        "--admission-startup-seconds",
        type=float,
        default=3.0,
        help="a starting stream counts twice against the real-time capacity until its listener has 2 s of audio in "
        "hand, for at most this long (its first sentences are made at burst speed), so a crowd arriving at once is "
        "let in a few at a time; 0 counts every stream once",
    )
    parser.add_option(
        "--max-text-chars", type=int, default=DEFAULT_LIMITS.max_text_chars, help="longest Synthesize text"
    )
    parser.add_option(
        "--max-stream-text-chars",
        type=int,
        default=DEFAULT_LIMITS.max_stream_text_chars,
        help="most text one StreamingSynthesize call may carry",
    )
    parser.add_option(
        "--max-reference-mb",
        type=float,
        default=DEFAULT_LIMITS.max_reference_bytes / MiB,
        help="largest reference audio, MiB",
    )
    parser.add_option("--reference-cache-size", type=int, default=64, help="processed reference clips kept")
    add_saved_voice_arguments(parser)
    parser.add_option("--probe-interval", type=float, default=0.5, help="seconds between upstream health probes")
    add_recognition_arguments(parser)
    return parser


def add_saved_voice_arguments(parser: EnvArgumentParser) -> None:
    parser.add_option(
        "--saved-voices-dir",
        default=str(Path.home() / ".local" / "state" / "tts_gateway" / "saved_voices"),
        help="where CreateVoice keeps saved voices (created if missing; survives restarts); empty keeps none; "
        "ignored when --saved-voices-database is set",
    )
    parser.add_option(
        "--saved-voices-database",
        default="",
        help="postgresql:// URL of a database that keeps the saved voices for every replica (schema migrated at "
        "start-up); unset: the --saved-voices-dir directory",
    )
    parser.add_option(
        "--max-saved-voices", type=int, default=100, help="most saved voices; more get RESOURCE_EXHAUSTED"
    )
    parser.add_option(
        "--max-saved-voices-mb", type=float, default=256.0, help="most storage the saved voices may take, MiB"
    )


def add_recognition_arguments(parser: EnvArgumentParser) -> None:
    parser.add_option(
        "--default-recognition-model",
        default="pocketsphinx",
        help="recognition model used when a request names none; when Triton does not serve it, the first one found",
    )
    parser.add_option(
        "--vad",
        default="silero",
        choices=["silero", "energy"],
        help="voice-activity detector that cuts audio into utterances: silero (Silero VAD's packaged ONNX model) or "
        "energy (a level threshold, for clean audio)",
    )
    parser.add_option(
        "--end-of-utterance-silence",
        type=float,
        default=0.6,
        help="seconds of silence after speech that end an utterance",
    )
    parser.add_option(
        "--max-utterance-seconds",
        type=float,
        default=30.0,
        help="an utterance is ended (and recognised) when it reaches this length",
    )
    parser.add_option(
        "--interim-interval",
        type=float,
        default=0.5,
        help="seconds of new speech between interim results (StreamingRecognize with interim_results)",
    )
    parser.add_option(
        "--transcript-model",
        default="",
        help="recognition model that transcribes zero-shot references sent without reference_text (and CreateVoice "
        "references without one); empty: the recognition service's default model; 'off': transcribe none (an empty "
        "zero-shot reference_text is refused)",
    )
    parser.add_option(
        "--transcript-cache-size", type=int, default=256, help="reference transcripts kept (LRU; 0 keeps none)"
    )
    parser.add_option("--max-recognize-seconds", type=float, default=600.0, help="longest Recognize clip, seconds")
    parser.add_option("--max-recognize-mb", type=float, default=8.0, help="largest Recognize clip (encoded), MiB")


@dataclass
class Gateway:
    host: ServiceHost
    servicer: TtsGatewayServicer
    monitor: UpstreamMonitor
    triton: TritonTts
    rvc: RvcClient
    saved: SavedVoiceStore | None = None


def build_gateway(args: argparse.Namespace) -> Gateway:
    host = ServiceHost("tts_gateway", server_options_from_args(args))
    specs = load_voice_specs(args.voices)
    saved = make_saved_voice_store(args, [spec.name for spec in specs])
    catalog = VoiceCatalog(specs, saved)
    triton = TritonTts(args.triton_url, credentials_from_args(args, "triton"))
    rvc = RvcClient(args.rvc_url, credentials_from_args(args, "rvc"))
    limits = Limits(
        max_text_chars=args.max_text_chars,
        max_stream_text_chars=args.max_stream_text_chars,
        max_reference_bytes=int(args.max_reference_mb * MiB),
    )
    make_vad(args.vad)  # fail at start-up, not on the first call, when the detector cannot be built
    asr = TritonAsr(triton)
    recognition = RecognitionServicer(
        asr,
        RecognitionSettings(
            default_model=args.default_recognition_model,
            vad=args.vad,
            endpointer=EndpointerSettings(
                end_silence_s=args.end_of_utterance_silence, max_utterance_s=args.max_utterance_seconds
            ),
            interim_interval_s=args.interim_interval,
            max_recognize_seconds=args.max_recognize_seconds,
            max_recognize_bytes=int(args.max_recognize_mb * MiB),
        ),
    )
    transcripts = None
    if args.transcript_model != TRANSCRIPTS_OFF:
        transcripts = ReferenceTranscripts(
            TritonRecognizer(asr, recognition.resolve_model, args.transcript_model),
            capacity=args.transcript_cache_size,
            max_chars=limits.max_reference_text_chars,
        )
    references = ReferenceCache(args.reference_cache_size)
    validator = RequestValidator(catalog, limits, references, transcripts)

    async def set_serving(serving: bool) -> None:
        await host.set_serving(serving, SERVICE_NAME)

    monitor = UpstreamMonitor(triton, rvc, catalog, set_serving, interval_s=args.probe_interval)
    servicer = TtsGatewayServicer(
        catalog=catalog,
        validator=validator,
        triton=triton,
        rvc=rvc,
        monitor=monitor,
        windows=LatencyWindows(),
        max_concurrent_streams=args.max_concurrent_streams,
        queue=make_admission_queue(args),
    )
    log.info("admission: host CPU load read from %s", servicer.queue.host.source)
    host.add_service(
        SERVICE_NAME, lambda server: tts_gateway_pb2_grpc.add_TtsGatewayServiceServicer_to_server(servicer, server)
    )
    host.add_service(
        RECOGNITION_SERVICE_NAME,
        lambda server: recognition_pb2_grpc.add_RecognitionServiceServicer_to_server(recognition, server),
    )

    if saved is not None:
        watch_saved_voices(saved, references, host)

    async def shutdown() -> None:
        await monitor.stop()
        await triton.close()
        await rvc.close()

    host.on_stop(shutdown)
    return Gateway(host, servicer, monitor, triton, rvc, saved)


def make_admission_queue(args: argparse.Namespace) -> AdmissionQueue:
    """The real-time model, its queue and the host-load reading, from the --admission-* flags."""
    enabled = args.admission_target_load > 0
    return AdmissionQueue(
        RealTimeAdmission(
            target_load=args.admission_target_load or 1.0,
            cold_start_streams=args.admission_cold_start_streams,
            startup_s=args.admission_startup_seconds,
            enabled=enabled,
        ),
        max_calls=args.max_concurrent_streams,
        max_length=args.admission_queue_length,
        max_wait_s=args.admission_max_wait,
        host=HostLoad(args.admission_host_load if enabled else "off"),
    )


def make_saved_voice_store(args: argparse.Namespace, configured: list[str]) -> SavedVoiceStore | None:
    """--saved-voices-database (shared by replicas) wins over --saved-voices-dir (this replica's disk)."""
    max_voices, max_bytes = args.max_saved_voices, int(args.max_saved_voices_mb * MiB)
    if args.saved_voices_database:
        return PostgresSavedVoiceStore(
            args.saved_voices_database,
            max_voices=max_voices,
            max_total_bytes=max_bytes,
            reserved_names=lambda: configured,
        )
    if args.saved_voices_dir:
        return DirectorySavedVoiceStore(
            Path(args.saved_voices_dir),
            max_voices=max_voices,
            max_total_bytes=max_bytes,
            reserved_names=lambda: configured,
        )
    return None


def watch_saved_voices(saved: SavedVoiceStore, references: ReferenceCache, host: ServiceHost) -> None:
    """Keep the reference cache, the saved-voice gauge and the store's gRPC health entry in step with the store."""

    def changed(name: str) -> None:
        references.discard_prefix(saved_reference_prefix(name))  # resampled clips of the old voice
        SAVED_VOICES.set(len(saved))

    def health_changed(health: StoreHealth) -> None:
        task = asyncio.get_running_loop().create_task(host.set_serving(health.available, SAVED_VOICES_HEALTH_NAME))
        _background.add(task)
        task.add_done_callback(_background.discard)

    saved.on_change(changed)
    host.on_stop(saved.close)
    if isinstance(saved, PostgresSavedVoiceStore):
        saved.on_health_change(health_changed)
    SAVED_VOICES.set(len(saved))


_background: set[asyncio.Task[None]] = set()


async def main(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    init_service_logging("tts_gateway", server_options_from_args(args))
    configure_tracing("tts_gateway")  # before the host starts: its server adds the tracing interceptor when on
    gateway = build_gateway(args)
    gateway.host.on_stop(shutdown_tracing)
    await gateway.host.start()
    if gateway.saved is not None:
        # Before announcing readiness: a replica that is up knows every saved voice (or says its store is down).
        await gateway.saved.start()
        await gateway.host.set_serving(gateway.saved.health().available, SAVED_VOICES_HEALTH_NAME)
    # Health starts SERVING; say NOT_SERVING for the gateway until the first probe has seen both upstreams.
    await gateway.host.set_serving(False, SERVICE_NAME)
    await gateway.monitor.probe_once()
    gateway.monitor.start()
    announce_ready(gateway.host, triton_url=args.triton_url, rvc_url=args.rvc_url)
    await gateway.host.run_until_signal()

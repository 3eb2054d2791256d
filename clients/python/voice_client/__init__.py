"""Python client for the voice.v1 services: `TtsClient`, `ConversionClient` and the `voice-cli` command line."""

from voice_client.client import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RVC_TARGET,
    DEFAULT_TTS_TARGET,
    MAX_RETRY_DELAY_S,
    ConversionClient,
    RetryNotice,
    StreamStats,
    SynthesisOptions,
    TtsClient,
    UnreadableAudioError,
    audio_input_from_file,
    conversion_settings,
    describe_rpc_error,
    exit_code_for,
    output_format,
    read_mono,
)
from voice_client.rpc_details import retry_delay_seconds, status_details

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RVC_TARGET",
    "DEFAULT_TTS_TARGET",
    "MAX_RETRY_DELAY_S",
    "ConversionClient",
    "RetryNotice",
    "StreamStats",
    "SynthesisOptions",
    "TtsClient",
    "UnreadableAudioError",
    "audio_input_from_file",
    "conversion_settings",
    "describe_rpc_error",
    "exit_code_for",
    "output_format",
    "read_mono",
    "retry_delay_seconds",
    "status_details",
]

"""Python client for the voice.v1 services: `TtsClient`, `ConversionClient` and the `voice-cli` command line."""

from clients.python.client import (
    DEFAULT_RVC_TARGET,
    DEFAULT_TTS_TARGET,
    ConversionClient,
    StreamStats,
    SynthesisOptions,
    TtsClient,
    audio_input_from_file,
    conversion_settings,
    describe_rpc_error,
    exit_code_for,
    output_format,
)

__all__ = [
    "DEFAULT_RVC_TARGET",
    "DEFAULT_TTS_TARGET",
    "ConversionClient",
    "StreamStats",
    "SynthesisOptions",
    "TtsClient",
    "audio_input_from_file",
    "conversion_settings",
    "describe_rpc_error",
    "exit_code_for",
    "output_format",
]

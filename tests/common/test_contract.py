"""The contract: generated stubs match proto/, and the conventions clients rely on hold."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

from voice.v1 import audio_pb2, tts_gateway_pb2, voice_conversion_pb2

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "gen" / "python"


def _load_generator() -> ModuleType:  # proto/ is not a package; load the generator script by path
    spec = importlib.util.spec_from_file_location("gen_python", REPO / "proto" / "gen_python.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_python"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    current = sorted(p.relative_to(GEN) for p in GEN.rglob("*.py*") if "__pycache__" not in p.parts)
    assert fresh == current, "stub file set differs from proto/: run `make setup`"
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, GEN / rel, shallow=False)]
    assert not stale, f"stale generated stubs {stale}: run `make setup`"
    assert any(str(rel).endswith(".pyi") for rel in fresh), "type stubs (.pyi) must be generated"


def test_both_services_stream_the_same_audio_chunk() -> None:
    gateway = tts_gateway_pb2.DESCRIPTOR.services_by_name["TtsGatewayService"]
    conversion = voice_conversion_pb2.DESCRIPTOR.services_by_name["VoiceConversionService"]
    chunk = audio_pb2.AudioChunk.DESCRIPTOR
    assert gateway.methods_by_name["Synthesize"].output_type is chunk
    assert gateway.methods_by_name["StreamingSynthesize"].output_type is chunk
    assert conversion.methods_by_name["Convert"].output_type is chunk


def test_enums_have_unspecified_zero() -> None:
    for file in (audio_pb2.DESCRIPTOR, tts_gateway_pb2.DESCRIPTOR, voice_conversion_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for enum in proto.enum_type:
            assert enum.value[0].number == 0 and enum.value[0].name.endswith("_UNSPECIFIED"), enum.name


def test_synthesis_modes_are_a_oneof() -> None:
    oneof = tts_gateway_pb2.SynthesizeRequest.DESCRIPTOR.oneofs_by_name["mode"]
    assert {f.name for f in oneof.fields} == {
        "preset_speaker",
        "zero_shot",
        "cross_lingual",
        "instruct",
        "voice_design",
    }
    config = tts_gateway_pb2.StreamingSynthesizeConfig.DESCRIPTOR.oneofs_by_name["mode"]
    assert {f.name for f in config.fields} == {f.name for f in oneof.fields}

"""The contract: generated stubs match proto/, and the conventions clients rely on hold."""

from __future__ import annotations

import filecmp
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

import voice.v1
from voice.v1 import audio_pb2, tts_gateway_pb2, voice_conversion_pb2

REPO = Path(__file__).resolve().parents[2]
INSTALLED = Path(voice.v1.__file__).resolve().parents[1].parent  # site-packages (or wherever voice-proto went)


def _load_generator() -> ModuleType:  # proto/ is not a package; load the generator script by path
    spec = importlib.util.spec_from_file_location("gen_python", REPO / "proto" / "gen_python.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_python"] = module
    spec.loader.exec_module(module)
    return module


def _stub_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "voice").rglob("*") if p.suffix in {".py", ".pyi", ".typed"})


def test_installed_stubs_are_fresh(tmp_path: Path) -> None:
    """The installed voice-proto distribution was generated from the .proto files in this checkout."""
    _load_generator().generate(tmp_path)
    fresh = _stub_files(tmp_path)
    assert fresh == _stub_files(INSTALLED), "installed stub file set differs from proto/: run `make setup`"
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, INSTALLED / rel, shallow=False)]
    assert not stale, f"stale installed stubs {stale}: run `make setup`"
    assert any(rel.suffix == ".pyi" for rel in fresh), "type stubs (.pyi) must be generated"
    assert (tmp_path / "voice" / "v1" / "py.typed").is_file(), "the stubs are marked as typed (PEP 561)"


def test_stub_wheel_ships_the_contract_and_nothing_else(tmp_path: Path) -> None:
    """A wheel built from proto/ carries the generated modules and the .proto sources, and depends only on the
    gRPC and protobuf runtimes."""
    source = shutil.copytree(REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    build = subprocess.run([*pip_wheel, "-w", str(tmp_path / "dist")], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("voice_proto-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    for stem in ("audio", "conversion", "tts_gateway", "voice_conversion"):
        assert {f"voice/v1/{stem}_pb2.py", f"voice/v1/{stem}_pb2.pyi", f"voice/v1/{stem}.proto"} <= names
    assert {name.split("/")[0] for name in names if not name.startswith("voice_proto-")} == {"voice"}
    requires = sorted(re.split(r"[<>=!~ ;]", r, maxsplit=1)[0] for r in metadata.get_all("Requires-Dist") or [])
    assert requires == ["grpcio", "protobuf"]


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

"""The model catalog: every checkpoint `voice-models` can fetch, declared once.

An entry names a Hugging Face repository, the commit it is pinned to, the files to take from it (only those the
backend loads), roughly how much that is, its licence, whether the Hub gates it, and the folder it fills under the
models directory. An entry that fills a backend of the registry (`voice_triton.registry`) takes its folder name and
its completeness check from that backend, so the launcher and `voice-models` judge a checkpoint the same way; the
others (the RVC base assets, SNAC inside the Orpheus folder) carry a layout of
their own.

`voice-models pull` leaves a download record beside the files (`<folder>/.cache/voice-models/<entry>.json`: the
commit and each file's size and hash as the Hub listed them), so `list`, `verify` and `deploy/local/run_stack.py` can
tell a complete folder from one a download left half-done, without the network.

Like the registry, this module imports nothing heavy: run_stack and the Triton environment read it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from voice_triton import registry
from voice_triton.registry import Layout

COMMIT = re.compile(r"[0-9a-f]{40}")
# Beside huggingface_hub's own `<local_dir>/.cache/huggingface/`, so one hidden folder holds all download state.
RECORD_DIR = Path(".cache") / "voice-models"
HF_DOWNLOAD_DIR = Path(".cache") / "huggingface"


@dataclass(frozen=True)
class Licence:
    spdx: str
    url: str
    note: str = ""
    # A licence whose terms a user must accept on the command line (`--accept-license`) before the download.
    must_accept: bool = False


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    repo_id: str
    # A commit id, or a branch where none could be confirmed from public material (`revision_source` says which).
    revision: str
    revision_source: str
    # huggingface_hub allow-patterns (fnmatch on the path in the repository; `*` also crosses `/`).
    files: tuple[str, ...]
    # Approximate bytes of the allowed files at the pinned revision, for the listing and the free-space check.
    size_bytes: int
    licence: Licence
    gated: bool = False
    # The registry backend this checkpoint fills; "" for assets outside the Triton repository.
    backend: str = ""
    # The folder under the models directory; "" means the backend's registered `models_dir_name`.
    folder: str = ""
    # The completeness check of an entry that fills no backend.
    layout: Layout | None = None
    # Entries pulled along with this one (placed in their own folders, e.g. SNAC inside the Orpheus folder).
    includes: tuple[str, ...] = ()
    # The folder also holds files of other origin (user RVC voices): `rm` takes out only this entry's files.
    shared_folder: bool = False
    # What the entry enables when no backend says it.
    enables: str = ""

    @property
    def revision_pinned(self) -> bool:
        return COMMIT.fullmatch(self.revision) is not None

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    def directory(self, models_dir: Path) -> Path:
        return models_dir / (self.folder or registry.get(self.backend).models_dir_name)

    def required(self) -> tuple[str, ...]:
        if self.backend:
            layout = registry.get(self.backend).layout
            return layout.required if layout else ()
        return self.layout.required if self.layout else ()

    def missing(self, models_dir: Path) -> list[str]:
        """Layout entries absent from the entry's folder: the launcher's own check for a backend's checkpoint."""
        if self.backend:
            return registry.get(self.backend).missing(self.directory(models_dir))
        return self.layout.missing(self.directory(models_dir)) if self.layout else []

    def parts(self) -> list[Entry]:
        """This entry and those pulled with it, in pull order."""
        return [self, *(get(name) for name in self.includes)]


@dataclass(frozen=True)
class RecordedFile:
    path: str
    size: int
    # The Hub's sha256 of an LFS file's content, or the git blob id of a small file (exactly one is set).
    sha256: str | None = None
    git_oid: str | None = None


@dataclass(frozen=True)
class Record:
    """What the Hub listed for an entry at its revision, written before the files are fetched."""

    entry: str
    repo_id: str
    revision: str
    commit: str
    files: tuple[RecordedFile, ...]
    licence_accepted: bool = False

    @staticmethod
    def path(folder: Path, entry: str) -> Path:
        return folder / RECORD_DIR / f"{entry}.json"

    def write(self, folder: Path) -> None:
        target = Record.path(folder, self.entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    @staticmethod
    def read(folder: Path, entry: str) -> Record | None:
        try:
            data = json.loads(Record.path(folder, entry).read_text(encoding="utf-8"))
            files = tuple(RecordedFile(**item) for item in data.pop("files"))
            return Record(files=files, **data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class State:
    """An entry as found in a models directory."""

    entry: Entry
    directory: Path
    present: bool
    # Layout entries absent, and recorded files absent or of another size than the Hub listed, relative to directory.
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.present and not self.missing

    @property
    def label(self) -> str:
        if not self.present:
            return "absent"
        return "complete" if self.complete else f"incomplete (missing {', '.join(self.missing)})"


def state(entry: Entry, models_dir: Path) -> State:
    root = entry.directory(models_dir)
    layout_missing = entry.missing(models_dir)
    present = len(layout_missing) < len(entry.required())
    recorded_missing: list[str] = []
    for part in entry.parts():
        folder = part.directory(models_dir)
        record = Record.read(folder, part.name)
        if record is None:
            continue
        present = True
        prefix = os.path.relpath(folder, root)
        for item in record.files:
            path = folder / item.path
            if not path.is_file() or path.stat().st_size != item.size:
                recorded_missing.append(item.path if prefix == "." else f"{prefix}/{item.path}")
    # A layout entry whose published file is recorded as missing is named once, as that file.
    missing = [item for item in layout_missing if not set(item.split("|")) & set(recorded_missing)]
    missing += [name for name in recorded_missing if name not in missing]
    return State(entry, root, present, tuple(missing))


def incomplete(models_dir: Path) -> list[State]:
    """Entries with something in the models directory but not all of it (what `make run` reports at start)."""
    return [found for found in (state(entry, models_dir) for entry in CATALOG) if found.present and found.missing]


_ORPHEUS = registry.get("orpheus")

CATALOG: tuple[Entry, ...] = (
    Entry(
        name="spark-tts-0.5b",
        title="Spark-TTS-0.5B: zero-shot cloning and voice design, Chinese and English (16 kHz)",
        repo_id="SparkAudio/Spark-TTS-0.5B",
        revision="642071559bfc6346c2359d19dcb6be3f9dd8a05d",
        revision_source="the commit several public projects pin (hf_hub revision= and snapshot paths)",
        files=(
            "config.yaml",
            "BiCodec/config.yaml",
            "BiCodec/model.safetensors",
            "LLM/*",
            "wav2vec2-large-xlsr-53/*.json",
            "wav2vec2-large-xlsr-53/pytorch_model.bin",
            "wav2vec2-large-xlsr-53/model.safetensors",
        ),
        # LLM 2.03 GB + wav2vec2 1.27 GB + BiCodec 626 MB + configs and tokenizer.
        size_bytes=3_930_000_000,
        licence=Licence(
            "CC-BY-NC-SA-4.0",
            "https://creativecommons.org/licenses/by-nc-sa/4.0/",
            "non-commercial use only, share alike; the model card at https://huggingface.co/SparkAudio/Spark-TTS-0.5B",
            must_accept=True,
        ),
        backend="spark",
    ),
    Entry(
        name="orpheus-3b-0.1-ft",
        title="Orpheus 3B 0.1 fine-tuned: eight preset English speakers (24 kHz, with SNAC 24 kHz)",
        repo_id="canopylabs/orpheus-3b-0.1-ft",
        revision="4206a56e5a68cf6cf96900a8a78acd3370c02eb6",
        revision_source="the commit public deployments pin (MODEL_REVISION, tree/<commit> links)",
        files=("*.json", "*.safetensors"),
        # 3.3 B parameters in bf16, two safetensors shards, plus the tokenizer.
        size_bytes=6_610_000_000,
        licence=Licence(
            "Apache-2.0",
            "https://huggingface.co/canopylabs/orpheus-3b-0.1-ft",
            "model card: Apache-2.0; fine-tuned from Llama 3.2 3B, so the Llama 3.2 Community License and its "
            "acceptable-use policy apply as well (the Hub asks you to accept them)",
        ),
        gated=True,
        backend="orpheus",
        includes=("snac-24khz",),
    ),
    Entry(
        name="snac-24khz",
        title="SNAC 24 kHz: the audio codec Orpheus writes tokens for (pulled with orpheus-3b-0.1-ft)",
        repo_id="hubertsiuzdak/snac_24khz",
        revision="d73ad176a12188fcf4f360ba3bf2c2fbbe8f58ec",
        revision_source="the commit public Orpheus and SNAC tools pin, with the weights' sha256",
        files=("config.json", "pytorch_model.bin"),
        size_bytes=79_488_554,
        licence=Licence("MIT", "https://huggingface.co/hubertsiuzdak/snac_24khz"),
        # Where the Orpheus backend reads it: inside its checkpoint.
        folder=f"{_ORPHEUS.models_dir_name}/snac",
        layout=Layout(("config.json", "pytorch_model.bin")),
        enables="the orpheus backend's audio decoder (orpheus-3b-0.1-ft needs it)",
    ),
    Entry(
        name="cosyvoice2-0.5b",
        title="CosyVoice2-0.5B: multilingual zero-shot cloning (24 kHz)",
        repo_id="FunAudioLLM/CosyVoice2-0.5B",
        revision="eec1ae6c79877dbd9379285cf8789c9e0879293d",
        revision_source="the commit public CosyVoice2 projects pin, with per-file sizes and hashes",
        # What CosyVoice2's loader reads: the model YAML, LM, flow, HiFT vocoder, speaker embedder, speech tokenizer
        # and the Qwen2 blank LM; the flow decoder's fp32 ONNX is what the GPU runtime turns into a TensorRT engine.
        files=(
            "cosyvoice2.yaml",
            "llm.pt",
            "flow.pt",
            "hift.pt",
            "campplus.onnx",
            "speech_tokenizer_v2.onnx",
            "flow.decoder.estimator.fp32.onnx",
            "CosyVoice-BlankEN/*",
        ),
        size_bytes=4_360_272_348,
        licence=Licence("Apache-2.0", "https://huggingface.co/FunAudioLLM/CosyVoice2-0.5B"),
        backend="cosyvoice2",
    ),
    Entry(
        name="whisper-large-v3-turbo",
        title="Whisper large-v3-turbo: multilingual speech recognition, 100 languages (16 kHz)",
        repo_id="openai/whisper-large-v3-turbo",
        revision="41f01f3fe87f28c78e2fbf8b568835947dd65ed9",
        revision_source="the commit public projects pin (snapshot_download revision=, tree/<commit> links)",
        # What WhisperForConditionalGeneration and WhisperProcessor load (not the flax/pytorch duplicates).
        files=(
            "config.json",
            "generation_config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
            "added_tokens.json",
            "special_tokens_map.json",
            "normalizer.json",
            "model.safetensors",
        ),
        # model.safetensors 1,617,824,864 bytes (fp16, 809 M parameters) plus the tokenizer and configs.
        size_bytes=1_622_400_000,
        licence=Licence("MIT", "https://huggingface.co/openai/whisper-large-v3-turbo"),
        backend="whisper",
    ),
    Entry(
        name="voxtral-mini-3b-2507",
        title="Voxtral Mini 3B (2507): speech recognition and audio understanding, 8 languages (16 kHz)",
        repo_id="mistralai/Voxtral-Mini-3B-2507",
        revision="3060fe34b35ba5d44202ce9ff3c097642914f8f3",
        revision_source="the commit public projects pin (snapshot paths, MODEL_REVISION, commit links)",
        # The transformers layout (two bf16 shards) and the Tekken tokenizer; not the Mistral-format duplicate
        # (consolidated.safetensors, params.json), which would double the download.
        files=(
            "config.json",
            "generation_config.json",
            "preprocessor_config.json",
            "tekken.json",
            "model.safetensors.index.json",
            "model*.safetensors",
        ),
        # 4.7 B parameters in bf16 plus tekken.json (14,894,206 bytes).
        size_bytes=9_370_000_000,
        licence=Licence("Apache-2.0", "https://huggingface.co/mistralai/Voxtral-Mini-3B-2507"),
        backend="voxtral",
    ),
    Entry(
        name="rvc-base",
        title="RVC base assets: HuBERT content encoder and RMVPE pitch model for the conversion service",
        repo_id="lj1995/VoiceConversionWebUI",
        revision="e6d0c1a17da07c33557852f9dfa2bd44cc75737d",
        revision_source="the commit public RVC tools pin, with rmvpe.pt's size and sha256",
        files=("hubert_base.pt", "rmvpe.pt"),
        # hubert_base.pt ~190 MB, rmvpe.pt 181,184,272 bytes.
        size_bytes=371_000_000,
        licence=Licence("MIT", "https://huggingface.co/lj1995/VoiceConversionWebUI"),
        # The conversion service's --models-dir; user voices (`voice-models pull-rvc`) go beside them.
        folder="rvc",
        layout=Layout(("hubert_base.pt", "rmvpe.pt")),
        shared_folder=True,
        enables="the conversion service's RVC voices (content encoder) and the rmvpe f0 method",
    ),
)


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}: known are {', '.join(names())}"


def names() -> list[str]:
    return [entry.name for entry in CATALOG]


def get(name: str) -> Entry:
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise UnknownModel(name)


def rvc_directory(models_dir: Path) -> Path:
    """The conversion service's models folder under a models directory."""
    return get("rvc-base").directory(models_dir)

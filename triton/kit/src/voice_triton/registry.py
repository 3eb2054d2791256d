"""The backend registry: every TTS/ASR family the Triton repository serves, declared once.

An entry says which folders of `triton/model_repo/` belong to the backend, what a checkpoint directory of it holds
(and so how to tell one apart from a half-downloaded or foreign folder), which gateway voices it provides, which
requirement files its code needs, and which module writes a tiny random-weight checkpoint for tests. The launcher,
`deploy/local/run_stack.py`, the Triton images and the tests read it; no backend name is written anywhere else.

This module imports nothing heavy (no torch, no Triton stub), so the development environment can read it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The repository folder next to this package in a source checkout (triton/kit/src/voice_triton -> triton/model_repo);
# an installed copy (the images) is told where the repository is through VOICE_TRITON_MODEL_REPO.
_SOURCE_REPO = Path(__file__).resolve().parents[3] / "model_repo"


def model_repository() -> Path:
    return Path(os.environ.get("VOICE_TRITON_MODEL_REPO", "") or _SOURCE_REPO)


@dataclass(frozen=True)
class Layout:
    """The files a checkpoint directory must hold. Each entry is a path relative to the directory, or several
    alternatives separated by `|` (weights published as safetensors or as a PyTorch pickle, sharded or not)."""

    required: tuple[str, ...]

    def missing(self, root: Path) -> list[str]:
        """The entries not present under `root` (all of them when it is no directory)."""
        if not root.is_dir():
            return list(self.required)
        return [entry for entry in self.required if not any((root / alt).is_file() for alt in entry.split("|"))]


@dataclass(frozen=True)
class Voice:
    """A gateway voice (services/tts_gateway/voices.toml format) a backend provides once it serves."""

    name: str
    description: str
    tts_model: str
    speaker: str = ""

    def toml(self) -> str:
        lines = ["[[voice]]", f'name = "{self.name}"', f'description = "{self.description}"']
        lines.append(f'tts_model = "{self.tts_model}"')
        if self.speaker:
            lines.append(f'speaker = "{self.speaker}"')
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Backend:
    """One backend. `layout` None means its weights ship inside a Python package (served without a checkpoint)."""

    name: str
    title: str
    models: tuple[str, ...]
    # The model the gateway calls; `--<name>-param` and `--param` without a model name apply to it.
    entry_model: str
    layout: Layout | None = None
    # Where `voice-models pull` puts the checkpoint and where the launcher looks for it, under the models folder.
    models_dir_name: str = ""
    # Voices as (name, description, speaker); speaker "" for a cloning model. None: one voice per speaker of the
    # entry model's `speakers` parameter, named `<voice_prefix><speaker>`.
    voices: tuple[tuple[str, str, str], ...] | None = ()
    voice_prefix: str = ""
    # Requirement files under triton/, installed in this order (`--no-deps` ones say so in their own header).
    requirements: tuple[str, ...] = ()
    # Module run as `python -m MODULE OUT --seed N` in the Triton environment: writes a tiny random checkpoint.
    tiny_writer: str = ""
    # Parameters of the entry model that keep the tiny checkpoint's pieces short in smoke runs and tests.
    tiny_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.layout is None

    def missing(self, root: Path) -> list[str]:
        return [] if self.layout is None else self.layout.missing(root)

    def gateway_voices(self, repository: Path | None = None) -> list[Voice]:
        if self.voices is not None:
            return [Voice(name, description, self.entry_model, speaker) for name, description, speaker in self.voices]
        speakers = entry_parameter(repository or model_repository(), self.entry_model, "speakers")
        return [
            Voice(f"{self.voice_prefix}{speaker}", f"{self.title}, {speaker}", self.entry_model, speaker)
            for speaker in (s.strip() for s in speakers.split(","))
            if speaker
        ]


def entry_parameter(repository: Path, model: str, key: str) -> str:
    """A string parameter of a model's config.pbtxt, read with Triton's own config protobuf."""
    from voice_triton.model_config import read_config

    config = read_config(repository / model / "config.pbtxt")
    return config.parameters[key].string_value if key in config.parameters else ""


# The published CosyVoice2-0.5B checkpoint directory (FunAudioLLM/CosyVoice2-0.5B) as the backend loads it.
# spk2info.pt (preset speakers) is optional.
COSYVOICE2_LAYOUT = Layout(
    (
        "cosyvoice2.yaml",
        "llm.pt",
        "flow.pt",
        "hift.pt",
        "campplus.onnx",
        "speech_tokenizer_v2.onnx",
        "CosyVoice-BlankEN/config.json",
        "CosyVoice-BlankEN/model.safetensors",
        # The Qwen2 tokenizer CosyVoice's QwenTokenizer loads: published as the slow files (vocab.json, merges.txt);
        # a fast tokenizer.json (what the tiny writers produce) serves as well.
        "CosyVoice-BlankEN/tokenizer_config.json",
        "CosyVoice-BlankEN/vocab.json|CosyVoice-BlankEN/tokenizer.json",
        "CosyVoice-BlankEN/merges.txt|CosyVoice-BlankEN/tokenizer.json",
    )
)

BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="piper",
        title="Piper (en_US joe, embedded default)",
        models=("piper_tts", "piper_tts_whole"),
        entry_model="piper_tts",
        # The voices come with the gateway's shipped voices.toml (joe and its conversions).
        voices=(),
        requirements=("requirements-models.txt",),
    ),
    Backend(
        # Speech in: the embedded default recognition model (its weights ship in the pocketsphinx wheel).
        name="pocketsphinx",
        title="CMU PocketSphinx (en-US, embedded default recognition)",
        models=("pocketsphinx",),
        entry_model="pocketsphinx",
        voices=(),
        requirements=("requirements-models.txt",),
    ),
    Backend(
        name="spark",
        title="Spark-TTS-0.5B",
        models=("spark_tts", "spark_audio_tokenizer", "spark_vocoder"),
        entry_model="spark_tts",
        layout=Layout(
            (
                "config.yaml",
                "BiCodec/config.yaml",
                "BiCodec/model.safetensors",
                "wav2vec2-large-xlsr-53/config.json",
                "wav2vec2-large-xlsr-53/preprocessor_config.json",
                "wav2vec2-large-xlsr-53/pytorch_model.bin|wav2vec2-large-xlsr-53/model.safetensors",
                "LLM/config.json",
                "LLM/tokenizer.json|LLM/vocab.json",
                "LLM/model.safetensors|LLM/model.safetensors.index.json|LLM/pytorch_model.bin",
            )
        ),
        models_dir_name="Spark-TTS-0.5B",
        voices=(("spark", "Spark-TTS: zero-shot and cross-lingual cloning, voice design (Chinese and English)", ""),),
        requirements=("requirements-models.txt", "requirements-torch.txt", "requirements-spark.txt"),
        tiny_writer="voice_triton.tiny.spark",
        # Shorter pieces than the production default keep the random model's longest piece to 8 s of audio.
        tiny_params={"max_new_tokens": "400"},
    ),
    Backend(
        name="orpheus",
        title="Orpheus TTS",
        models=("orpheus_tts",),
        entry_model="orpheus_tts",
        layout=Layout(
            (
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "model.safetensors|model.safetensors.index.json|pytorch_model.bin",
                "snac/config.json",
                "snac/pytorch_model.bin",
            )
        ),
        models_dir_name="orpheus-3b-0.1-ft",
        voices=None,
        voice_prefix="orpheus-",
        requirements=("requirements-models.txt", "requirements-torch.txt", "requirements-spark.txt"),
        tiny_writer="voice_triton.tiny.orpheus",
    ),
    Backend(
        name="cosyvoice2",
        title="CosyVoice2-0.5B",
        models=("cosyvoice2", "cosyvoice2_speech_tokenizer", "cosyvoice2_speaker_embedding", "cosyvoice2_token2wav"),
        entry_model="cosyvoice2",
        layout=COSYVOICE2_LAYOUT,
        models_dir_name="CosyVoice2-0.5B",
        voices=(
            (
                "cosyvoice2",
                "CosyVoice2: zero-shot, cross-lingual and instruct cloning, text-in streaming (zh, en, ja, ko, yue)",
                "",
            ),
        ),
        requirements=("requirements-models.txt", "requirements-torch.txt"),
        tiny_writer="voice_triton.tiny.cosyvoice2",
        # The random model never ends a piece by itself: a low length bound keeps its pieces short; the tiny
        # checkpoint's spk2info.pt has these two preset speakers.
        tiny_params={
            "max_token_text_ratio": "3",
            "speakers": "tiny_female,tiny_male",
            "supported_modes": "zero_shot,cross_lingual,instruct,preset_speaker",
            # Tests wait for an idle session to expire.
            "session_idle_timeout_s": "8",
        },
    ),
    Backend(
        name="whisper",
        title="Whisper",
        models=("whisper",),
        entry_model="whisper",
        layout=Layout(
            (
                "config.json",
                "generation_config.json",
                "preprocessor_config.json",
                "tokenizer_config.json",
                "tokenizer.json|vocab.json",
                "tokenizer.json|merges.txt",
                "model.safetensors|model.safetensors.index.json|pytorch_model.bin",
            )
        ),
        models_dir_name="whisper-large-v3-turbo",
        # Recognition: no gateway voices.
        voices=(),
        requirements=("requirements-models.txt", "requirements-torch.txt"),
        tiny_writer="voice_triton.tiny.whisper",
        # A few tokens per 30 s window and a short limit keep the random model's requests quick in tests.
        tiny_params={"max_new_tokens": "8", "max_audio_seconds": "120"},
    ),
    Backend(
        name="voxtral",
        title="Voxtral Mini 3B",
        models=("voxtral",),
        entry_model="voxtral",
        layout=Layout(
            (
                "config.json",
                "preprocessor_config.json",
                "tekken.json",
                "model.safetensors|model.safetensors.index.json",
            )
        ),
        models_dir_name="Voxtral-Mini-3B-2507",
        voices=(),
        requirements=("requirements-models.txt", "requirements-torch.txt"),
        tiny_writer="voice_triton.tiny.voxtral",
        tiny_params={"max_new_tokens": "8", "max_audio_seconds": "120"},
    ),
)


class UnknownBackend(KeyError):
    def __str__(self) -> str:
        return f"unknown backend {self.args[0]!r}: known are {', '.join(names())}"


def names() -> list[str]:
    return [backend.name for backend in BACKENDS]


def get(name: str) -> Backend:
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise UnknownBackend(name)


def owner(model: str) -> Backend:
    """The backend a model folder belongs to."""
    for backend in BACKENDS:
        if model in backend.models:
            return backend
    raise KeyError(f"model {model!r} belongs to no registered backend")


def voices_toml(backends: Iterable[Backend], repository: Path | None = None) -> str:
    """The voices the given backends provide, as voices.toml entries (appended to the shipped file)."""
    return "".join("\n" + voice.toml() for backend in backends for voice in backend.gateway_voices(repository))


def requirement_files(triton_dir: Path) -> list[Path]:
    """Every backend's requirement files, each once, in registry order."""
    seen: dict[str, None] = {}
    for backend in BACKENDS:
        for name in backend.requirements:
            seen.setdefault(name, None)
    return [triton_dir / name for name in seen]

"""Saved-voice store: validation, quotas, persistence across restarts, crash leftovers and concurrent creates.

Everything runs against real directories under tmp_path and real WAV files written and read by soundfile.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, ServiceError
from services.tts_gateway.saved_voices import (
    FORMAT_VERSION,
    MAX_DESCRIPTION_CHARS,
    MAX_REFERENCE_TEXT_CHARS,
    AlreadyExists,
    SavedVoice,
    SavedVoiceStore,
)

RATE = 16_000


def speech_like(seconds: float = 3.0, rate: int = RATE, peak: float = 0.3, seed: int = 0) -> np.ndarray:
    """A 150 Hz voice with harmonics, amplitude-modulated at a syllable rate (4 Hz), plus a little breath noise."""
    t = np.arange(round(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))  # 0..1, four "syllables" a second
    noise = np.random.default_rng(seed).normal(0.0, 0.01, t.size)
    signal = envelope * voiced + noise
    return (peak * signal / np.max(np.abs(signal))).astype(np.float32)


def rms_dbfs(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))


def make(store: SavedVoiceStore, name: str, **overrides: object) -> SavedVoice:
    kwargs: dict[str, object] = {"base_voice": "spark", "samples": speech_like(), "sample_rate_hz": RATE}
    kwargs.update(overrides)
    return store.create(name, **kwargs)  # type: ignore[arg-type]


def violation_fields(exc: InvalidArgument) -> list[str]:
    return [field for field, _ in exc.violations]


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "saved"


# ------------------------------------------------------------------------------------------------- round trip


def test_create_get_list_delete_round_trip(root: Path) -> None:
    store = SavedVoiceStore(root)
    samples = speech_like(2.5)
    before = samples.copy()
    created = store.create(
        "zeta",
        base_voice="spark",
        samples=samples,
        sample_rate_hz=RATE,
        reference_text="Hello there.",
        description="Zeta's voice",
    )
    make(store, "alpha")
    make(store, "Mid-1.v2")

    assert created.name == "zeta"
    assert created.base_voice == "spark"
    assert created.reference_text == "Hello there."
    assert created.description == "Zeta's voice"
    assert created.sample_rate_hz == RATE
    assert created.duration_s == pytest.approx(2.5)
    assert created.samples.dtype == np.float32
    assert np.array_equal(created.samples, before)
    samples[:] = 0.0  # the store keeps its own copy
    assert np.array_equal(store.get("zeta").samples, before)

    assert store.get("zeta") == created
    assert [v.name for v in store.list()] == ["Mid-1.v2", "alpha", "zeta"]
    assert "zeta" in store and "nope" not in store and len(store) == 3

    # On disk: one directory per voice, a mono float32 WAV and the metadata, sizes as reported.
    voice_dir = root / "zeta"
    info = sf.info(str(voice_dir / "reference.wav"))
    assert (info.channels, info.samplerate, info.subtype, info.frames) == (1, RATE, "FLOAT", before.size)
    meta = json.loads((voice_dir / "voice.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == FORMAT_VERSION
    assert {k: meta[k] for k in ("name", "base_voice", "reference_text", "description", "sample_rate_hz")} == {
        "name": "zeta",
        "base_voice": "spark",
        "reference_text": "Hello there.",
        "description": "Zeta's voice",
        "sample_rate_hz": RATE,
    }
    assert meta["create_time"] == created.create_time
    assert created.size_bytes == sum(p.stat().st_size for p in voice_dir.iterdir())
    assert store.total_bytes == sum(v.size_bytes for v in store.list())

    deleted = store.delete("zeta")
    assert deleted == created
    assert np.array_equal(deleted.samples, before)
    assert not voice_dir.exists()
    assert entries(root) == ["Mid-1.v2", "alpha"]
    assert "zeta" not in store
    with pytest.raises(NotFound) as not_found:
        store.get("zeta")
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    assert "zeta" in not_found.value.message
    with pytest.raises(NotFound) as again:
        store.delete("zeta")
    assert again.value.code == grpc.StatusCode.NOT_FOUND


def test_samples_are_read_only(root: Path) -> None:
    voice = make(SavedVoiceStore(root), "ro")
    assert not voice.samples.flags.writeable
    with pytest.raises(ValueError):
        voice.samples[0] = 1.0


def test_text_fields_are_stripped_and_empty_transcript_allowed(root: Path) -> None:
    voice = make(SavedVoiceStore(root), "cross", reference_text="   ", description="  calm  ")
    assert voice.reference_text == ""
    assert voice.description == "calm"


def test_other_sample_types_and_rates_are_stored_as_float32_at_their_rate(root: Path) -> None:
    samples64 = speech_like(2.0, rate=44_100).astype(np.float64)
    voice = make(SavedVoiceStore(root), "hifi", samples=samples64, sample_rate_hz=44_100)
    assert voice.samples.dtype == np.float32
    assert voice.duration_s == pytest.approx(2.0)
    assert sf.info(str(root / "hifi" / "reference.wav")).samplerate == 44_100


# --------------------------------------------------------------------------------------------- persistence


def test_voices_survive_a_restart_with_identical_samples(root: Path) -> None:
    first = SavedVoiceStore(root)
    originals = {
        "anna": make(first, "anna", reference_text="Guten Tag.", description="German"),
        "bob": make(first, "bob", samples=speech_like(4.0, rate=24_000, seed=3), sample_rate_hz=24_000),
    }
    # Differences far below 16-bit resolution must survive: the file is float32, not re-quantised.
    originals["tiny"] = make(first, "tiny", samples=speech_like(1.5) + np.float32(1e-7))

    second = SavedVoiceStore(root)
    assert [v.name for v in second.list()] == ["anna", "bob", "tiny"]
    for name, original in originals.items():
        reloaded = second.get(name)
        assert reloaded == original  # every metadata field, create_time and size_bytes included
        assert reloaded.samples.dtype == np.float32
        assert np.array_equal(reloaded.samples, original.samples)
        assert not reloaded.samples.flags.writeable

    # A delete in the new store is seen by the next one too.
    second.delete("bob")
    assert [v.name for v in SavedVoiceStore(root).list()] == ["anna", "tiny"]


# ------------------------------------------------------------------------------------------------ conflicts


def test_duplicate_name_is_already_exists(root: Path) -> None:
    store = SavedVoiceStore(root)
    original = make(store, "dup")
    with pytest.raises(AlreadyExists) as exc:
        make(store, "dup", samples=speech_like(2.0, seed=9))
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(exc.value, ServiceError)
    assert "'dup'" in exc.value.message
    assert exc.value.to_status_proto().code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert exc.value.details[0].resource_name == "dup"
    # The first voice is untouched and nothing was left behind.
    assert np.array_equal(store.get("dup").samples, original.samples)
    assert entries(root) == ["dup"]


def test_configured_voice_names_are_reserved_when_asked(root: Path) -> None:
    configured = ["narrator"]
    store = SavedVoiceStore(root, reserved_names=lambda: configured)
    with pytest.raises(AlreadyExists) as exc:
        make(store, "narrator")
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "narrator" in exc.value.message and "configured" in exc.value.message
    # The list is consulted on every create, so a voice configured later is protected too.
    configured.append("late")
    with pytest.raises(AlreadyExists):
        make(store, "late")
    assert make(store, "free").name == "free"
    assert entries(root) == ["free"]


@pytest.mark.parametrize(
    "bad_name",
    [
        "",
        "../x",
        "a/b",
        "x" * 200,
        "my voice",
        " joe",
        "joe ",
        ".hidden",
        "-dash",
        "a..b",
        "a\\b",
        "caf\u00e9",
        "a\x00b",
    ],
)
def test_bad_names_are_invalid_argument_and_touch_nothing(tmp_path: Path, bad_name: str) -> None:
    root = tmp_path / "saved"
    store = SavedVoiceStore(root)
    with pytest.raises(InvalidArgument) as exc:
        make(store, bad_name)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_fields(exc.value) == ["name"]
    assert entries(root) == []
    assert entries(tmp_path) == ["saved"]  # nothing escaped the root either
    assert bad_name not in store
    with pytest.raises(NotFound):
        store.get(bad_name)
    with pytest.raises(InvalidArgument):
        store.delete(bad_name)


def test_name_rule_limits(root: Path) -> None:
    store = SavedVoiceStore(root)
    assert make(store, "x" * 128).name == "x" * 128
    assert make(store, "9_lives.v-2").name == "9_lives.v-2"
    with pytest.raises(InvalidArgument) as exc:
        make(store, "x" * 129)
    assert "128" in exc.value.violations[0][1]


# ------------------------------------------------------------------------------------------ reference checks


def _reference_rejection(store: SavedVoiceStore, samples: np.ndarray, rate: int = RATE) -> str:
    with pytest.raises(InvalidArgument) as exc:
        make(store, "ref", samples=samples, sample_rate_hz=rate)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_fields(exc.value) == ["reference_audio"]
    assert "ref" not in store
    return exc.value.violations[0][1]


def test_reference_duration_limits(root: Path) -> None:
    store = SavedVoiceStore(root)
    assert "0.50 s" in _reference_rejection(store, speech_like(0.5))
    assert "31.00 s" in _reference_rejection(store, speech_like(31.0))
    assert make(store, "shortest", samples=speech_like(1.0)).duration_s == pytest.approx(1.0)
    assert make(store, "longest", samples=speech_like(30.0)).duration_s == pytest.approx(30.0)
    assert entries(root) == ["longest", "shortest"]


def test_reference_duration_limits_are_configurable(root: Path) -> None:
    store = SavedVoiceStore(root, min_reference_s=2.0, max_reference_s=3.0)
    _reference_rejection(store, speech_like(1.5))
    _reference_rejection(store, speech_like(3.5))
    assert make(store, "ok", samples=speech_like(2.5)).name == "ok"


def test_silent_and_near_silent_references_are_rejected(root: Path) -> None:
    store = SavedVoiceStore(root)
    rng = np.random.default_rng(1)
    assert "silent" in _reference_rejection(store, np.zeros(3 * RATE, np.float32))
    assert "silent" in _reference_rejection(store, rng.normal(0.0, 1e-5, 3 * RATE).astype(np.float32))
    # A quiet room's noise floor (about -60 dBFS) is not a voice either.
    assert "silent" in _reference_rejection(store, rng.normal(0.0, 1e-3, 3 * RATE).astype(np.float32))
    # Nor is one loud click in silence, although its peak is full scale.
    click = np.zeros(3 * RATE, np.float32)
    click[RATE] = 1.0
    assert "silent" in _reference_rejection(store, click)
    assert entries(root) == []


def test_quiet_but_real_speech_is_accepted(root: Path) -> None:
    store = SavedVoiceStore(root)
    normal = speech_like(3.0)
    assert -25 < rms_dbfs(normal) < -10  # the test signal sits at a normal speech level
    assert make(store, "normal", samples=normal).name == "normal"
    quiet = speech_like(3.0, peak=0.03)  # about 20 dB below normal
    assert rms_dbfs(quiet) < -30
    assert make(store, "quiet", samples=quiet).name == "quiet"
    # Two seconds of speech in a 30 s clip of silence is still a usable reference.
    sparse = np.zeros(30 * RATE, np.float32)
    sparse[5 * RATE : 7 * RATE] = speech_like(2.0)
    assert rms_dbfs(sparse) < -30
    assert make(store, "sparse", samples=sparse).name == "sparse"


def test_non_finite_and_non_mono_references_are_rejected(root: Path) -> None:
    store = SavedVoiceStore(root)
    for bad_value in (np.nan, np.inf, -np.inf):
        samples = speech_like(2.0)
        samples[1234] = bad_value
        assert "index 1234" in _reference_rejection(store, samples)
    stereo = np.stack([speech_like(2.0), speech_like(2.0)], axis=1)
    assert "mono" in _reference_rejection(store, stereo)
    assert entries(root) == []


def test_bad_sample_rate_is_rejected(root: Path) -> None:
    store = SavedVoiceStore(root)
    for rate in (0, -16_000, 4000, 500_000):
        with pytest.raises(InvalidArgument) as exc:
            make(store, "rate", samples=speech_like(2.0), sample_rate_hz=rate)
        assert violation_fields(exc.value) == ["sample_rate_hz"]
    assert entries(root) == []


def test_text_length_limits_and_all_problems_reported_together(root: Path) -> None:
    store = SavedVoiceStore(root)
    assert make(store, "max-text", reference_text="a" * MAX_REFERENCE_TEXT_CHARS).reference_text == "a" * 1000
    assert make(store, "max-desc", description="d" * MAX_DESCRIPTION_CHARS).description == "d" * 500
    with pytest.raises(InvalidArgument) as exc:
        store.create(
            "../bad",
            base_voice=" ",
            samples=np.zeros(RATE * 2, np.float32),
            sample_rate_hz=RATE,
            reference_text="a" * (MAX_REFERENCE_TEXT_CHARS + 1),
            description="d" * (MAX_DESCRIPTION_CHARS + 1),
        )
    assert violation_fields(exc.value) == ["name", "base_voice", "reference_audio", "reference_text", "description"]
    assert "1001" in dict(exc.value.violations)["reference_text"]
    with pytest.raises(InvalidArgument) as control:
        make(store, "ctrl", reference_text="hello\x1bworld")
    assert violation_fields(control.value) == ["reference_text"]
    assert entries(root) == ["max-desc", "max-text"]


# --------------------------------------------------------------------------------------------------- quotas


def test_quota_by_count_and_recovery_after_delete(root: Path) -> None:
    store = SavedVoiceStore(root, max_voices=2)
    make(store, "one")
    make(store, "two")
    with pytest.raises(ResourceExhausted) as exc:
        make(store, "three")
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 of 2 voices" in exc.value.message and "delete" in exc.value.message
    assert entries(root) == ["one", "two"]  # the rejected voice's staging directory is gone
    # The count is of what is on disk: a restarted store with the same limit refuses too.
    with pytest.raises(ResourceExhausted):
        make(SavedVoiceStore(root, max_voices=2), "three")
    store.delete("one")
    assert make(store, "three").name == "three"
    assert [v.name for v in store.list()] == ["three", "two"]


def test_quota_by_bytes_counts_files_on_disk_and_recovers_after_delete(root: Path) -> None:
    first = SavedVoiceStore(root)
    a = make(first, "a")
    b = make(first, "b")
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert a.size_bytes + b.size_bytes == on_disk

    # Room for the two saved voices and half a third of the same size (not "size - 1": voice.json's create_time
    # is a float whose printed length varies by a digit, so a third voice can be a byte smaller than the first).
    store = SavedVoiceStore(root, max_total_bytes=on_disk + a.size_bytes // 2)
    assert store.total_bytes == on_disk
    with pytest.raises(ResourceExhausted) as exc:
        make(store, "c")
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "storage limit" in exc.value.message and "delete" in exc.value.message
    assert entries(root) == ["a", "b"]
    # A shorter clip fits in the space left.
    assert make(store, "short", samples=speech_like(1.0)).name == "short"
    store.delete("a")
    assert make(store, "c").name == "c"


def test_voice_larger_than_the_whole_byte_quota_says_to_shorten_it(root: Path) -> None:
    store = SavedVoiceStore(root, max_total_bytes=100_000)  # about 1.5 s of 16 kHz float32
    with pytest.raises(ResourceExhausted) as exc:
        make(store, "big", samples=speech_like(3.0))
    assert "shorter" in exc.value.message
    assert entries(root) == []


# ---------------------------------------------------------------------------------------- crash leftovers


def test_start_up_clears_leftovers_and_skips_damaged_voices(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = make(SavedVoiceStore(root), "good")

    # A write that crashed before its rename: a temp dir with a half-written WAV and no metadata.
    staging = root / ".tmp-0123456789abcdef"
    staging.mkdir()
    (staging / "reference.wav").write_bytes(b"RIFF\x00\x00")
    # A delete that crashed after its rename.
    trash = root / ".trash-fedcba9876543210"
    (trash / "sub").mkdir(parents=True)
    # Damaged voice directories.
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "voice.json").write_text("{not json", encoding="utf-8")
    sf.write(str(corrupt / "reference.wav"), speech_like(), RATE, subtype="FLOAT")
    no_wav = root / "no-wav"
    no_wav.mkdir()
    (no_wav / "voice.json").write_text((root / "good" / "voice.json").read_text().replace('"good"', '"no-wav"'))
    bad_wav = root / "bad-wav"
    bad_wav.mkdir()
    (bad_wav / "voice.json").write_text((root / "good" / "voice.json").read_text().replace('"good"', '"bad-wav"'))
    (bad_wav / "reference.wav").write_bytes(b"this is not audio")
    moved = root / "moved"  # a directory renamed by hand: its metadata names another voice
    moved.mkdir()
    for file in ("voice.json", "reference.wav"):
        (moved / file).write_bytes((root / "good" / file).read_bytes())
    future = root / "future"
    future.mkdir()
    meta = json.loads((root / "good" / "voice.json").read_text())
    (future / "voice.json").write_text(json.dumps({**meta, "name": "future", "format_version": FORMAT_VERSION + 1}))
    (future / "reference.wav").write_bytes((root / "good" / "reference.wav").read_bytes())
    (root / "stray-file.txt").write_text("not a voice")

    with caplog.at_level(logging.WARNING, logger="services.tts_gateway.saved_voices"):
        store = SavedVoiceStore(root)

    assert [v.name for v in store.list()] == ["good"]
    assert np.array_equal(store.get("good").samples, good.samples)
    assert not staging.exists() and not trash.exists()
    warned = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    for name in ("corrupt", "no-wav", "bad-wav", "moved", "future", "stray-file.txt"):
        assert name in warned
    # Damaged directories are left for the operator and do not count against the quota.
    assert corrupt.is_dir() and no_wav.is_dir()
    assert store.total_bytes == good.size_bytes
    # Their names cannot be reused until removed, and the error says why.
    with pytest.raises(FailedPrecondition) as exc:
        make(store, "corrupt")
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "damaged" in exc.value.message
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
    # Healthy work goes on.
    assert make(store, "fresh").name == "fresh"


# --------------------------------------------------------------------------------------------- concurrency


def _race(count: int, action: object) -> tuple[list[object], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        try:
            value = action(index)  # type: ignore[operator]
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def test_concurrent_creates_of_one_name_let_exactly_one_through(root: Path) -> None:
    store = SavedVoiceStore(root)
    clips = [speech_like(2.0, seed=i) for i in range(8)]
    results, errors = _race(8, lambda i: make(store, "same", samples=clips[i]))
    assert len(results) == 1
    assert len(errors) == 7 and all(isinstance(e, AlreadyExists) for e in errors)
    winner = results[0]
    assert isinstance(winner, SavedVoice)
    assert entries(root) == ["same"]
    reloaded = SavedVoiceStore(root).get("same")
    assert np.array_equal(reloaded.samples, winner.samples)


def test_concurrent_creates_respect_the_count_quota(root: Path) -> None:
    store = SavedVoiceStore(root, max_voices=3)
    results, errors = _race(8, lambda i: make(store, f"voice-{i}", samples=speech_like(1.5, seed=i)))
    assert len(results) == 3
    assert len(errors) == 5 and all(isinstance(e, ResourceExhausted) for e in errors)
    assert entries(root) == sorted(v.name for v in results)  # type: ignore[attr-defined]
    assert len(SavedVoiceStore(root)) == 3

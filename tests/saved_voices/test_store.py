"""Saved-voice stores, both kinds: validation, conflicts, quotas, persistence across restarts, concurrent creates.

Every test runs twice (``store_kind``): on real directories under tmp_path, and on a fresh database of a real
PostgreSQL server. A second ``open_store()`` is a restarted gateway (directory) or another replica (PostgreSQL).
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError
from services.tts_gateway.saved_voices import (
    MAX_DESCRIPTION_CHARS,
    MAX_REFERENCE_TEXT_CHARS,
    AlreadyExists,
    SavedVoice,
    SavedVoiceStore,
)
from tests.saved_voices.conftest import OpenStore
from tests.saved_voices.helpers import RATE, make, rms_dbfs, speech_like, total_bytes


def violation_fields(exc: InvalidArgument) -> list[str]:
    return [field for field, _ in exc.violations]


async def persisted(open_store: OpenStore) -> list[str]:
    """The names a freshly opened store finds: what is really stored, not what one store remembers."""
    return [voice.name for voice in (await open_store()).list()]


# ------------------------------------------------------------------------------------------------- round trip


async def test_create_get_list_delete_round_trip(open_store: OpenStore) -> None:
    store = await open_store()
    samples = speech_like(2.5)
    before = samples.copy()
    created = await store.create(
        "zeta",
        base_voice="spark",
        samples=samples,
        sample_rate_hz=RATE,
        reference_text="Hello there.",
        description="Zeta's voice",
    )
    await make(store, "alpha")
    await make(store, "Mid-1.v2")

    assert (created.name, created.base_voice, created.reference_text) == ("zeta", "spark", "Hello there.")
    assert (created.description, created.sample_rate_hz) == ("Zeta's voice", RATE)
    assert created.duration_s == pytest.approx(2.5)
    assert created.samples.dtype == np.float32
    assert np.array_equal(created.samples, before)
    assert created.size_bytes >= before.nbytes
    samples[:] = 0.0  # the store keeps its own copy
    assert np.array_equal(store.get("zeta").samples, before)

    assert store.get("zeta") == created
    assert [v.name for v in store.list()] == ["Mid-1.v2", "alpha", "zeta"]
    assert "zeta" in store and "nope" not in store and len(store) == 3

    deleted = await store.delete("zeta")
    assert deleted == created
    assert np.array_equal(deleted.samples, before)
    assert "zeta" not in store
    assert await persisted(open_store) == ["Mid-1.v2", "alpha"]
    with pytest.raises(NotFound) as not_found:
        store.get("zeta")
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    assert "zeta" in not_found.value.message
    with pytest.raises(NotFound) as again:
        await store.delete("zeta")
    assert again.value.code == grpc.StatusCode.NOT_FOUND


async def test_samples_are_read_only(open_store: OpenStore) -> None:
    voice = await make(await open_store(), "ro")
    assert not voice.samples.flags.writeable
    with pytest.raises(ValueError):
        voice.samples[0] = 1.0


async def test_text_fields_are_stripped_and_empty_transcript_allowed(open_store: OpenStore) -> None:
    voice = await make(await open_store(), "cross", reference_text="   ", description="  calm  ")
    assert voice.reference_text == ""
    assert voice.description == "calm"


async def test_other_sample_types_and_rates_are_stored_as_float32_at_their_rate(open_store: OpenStore) -> None:
    samples64 = speech_like(2.0, rate=44_100).astype(np.float64)
    voice = await make(await open_store(), "hifi", samples=samples64, sample_rate_hz=44_100)
    assert voice.samples.dtype == np.float32
    assert voice.duration_s == pytest.approx(2.0)
    reloaded = (await open_store()).get("hifi")
    assert reloaded.sample_rate_hz == 44_100
    assert np.array_equal(reloaded.samples, samples64.astype(np.float32))


async def test_a_clip_over_the_stored_size_limit_is_refused(open_store: OpenStore) -> None:
    store = await open_store()
    # 30 s at 96 kHz is 11 MiB of float32: more than the 8 MiB a stored clip may take.
    with pytest.raises(InvalidArgument) as exc:
        await make(store, "huge", samples=speech_like(30.0, rate=96_000), sample_rate_hz=96_000)
    assert violation_fields(exc.value) == ["reference_audio"]
    assert "8 MiB" in exc.value.violations[0][1] and "lower sample rate" in exc.value.violations[0][1]
    assert (await make(store, "fits", samples=speech_like(20.0, rate=96_000), sample_rate_hz=96_000)).name == "fits"


# --------------------------------------------------------------------------------------------- persistence


async def test_voices_survive_a_restart_with_identical_samples(open_store: OpenStore) -> None:
    first = await open_store()
    originals = {
        "anna": await make(first, "anna", reference_text="Guten Tag.", description="German"),
        "bob": await make(first, "bob", samples=speech_like(4.0, rate=24_000, seed=3), sample_rate_hz=24_000),
    }
    # Differences far below 16-bit resolution must survive: the stored clip is float32, not re-quantised.
    originals["tiny"] = await make(first, "tiny", samples=speech_like(1.5) + np.float32(1e-7))

    second = await open_store()
    assert [v.name for v in second.list()] == ["anna", "bob", "tiny"]
    for name, original in originals.items():
        reloaded = second.get(name)
        assert reloaded == original  # every metadata field, create_time and size_bytes included
        assert reloaded.samples.dtype == np.float32
        assert np.array_equal(reloaded.samples, original.samples)
        assert not reloaded.samples.flags.writeable

    # A delete in the new store is seen by the next one too.
    await second.delete("bob")
    assert await persisted(open_store) == ["anna", "tiny"]


# ------------------------------------------------------------------------------------------------ conflicts


async def test_duplicate_name_is_already_exists(open_store: OpenStore) -> None:
    store = await open_store()
    original = await make(store, "dup")
    with pytest.raises(AlreadyExists) as exc:
        await make(store, "dup", samples=speech_like(2.0, seed=9))
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(exc.value, ServiceError)
    assert "'dup'" in exc.value.message
    assert exc.value.to_status_proto().code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert exc.value.details[0].resource_name == "dup"
    # The first voice is untouched and nothing was left behind.
    assert np.array_equal(store.get("dup").samples, original.samples)
    assert await persisted(open_store) == ["dup"]


async def test_configured_voice_names_are_reserved_when_asked(open_store: OpenStore) -> None:
    configured = ["narrator"]
    store = await open_store(reserved_names=lambda: configured)
    with pytest.raises(AlreadyExists) as exc:
        await make(store, "narrator")
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "narrator" in exc.value.message and "configured" in exc.value.message
    # The list is consulted on every create, so a voice configured later is protected too.
    configured.append("late")
    with pytest.raises(AlreadyExists):
        await make(store, "late")
    assert (await make(store, "free")).name == "free"
    assert await persisted(open_store) == ["free"]


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
async def test_bad_names_are_invalid_argument_and_touch_nothing(open_store: OpenStore, bad_name: str) -> None:
    store = await open_store()
    with pytest.raises(InvalidArgument) as exc:
        await make(store, bad_name)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_fields(exc.value) == ["name"]
    assert bad_name not in store
    with pytest.raises(NotFound):
        store.get(bad_name)
    with pytest.raises(InvalidArgument):
        await store.delete(bad_name)
    assert await persisted(open_store) == []


async def test_name_rule_limits(open_store: OpenStore) -> None:
    store = await open_store()
    assert (await make(store, "x" * 128)).name == "x" * 128
    assert (await make(store, "9_lives.v-2")).name == "9_lives.v-2"
    with pytest.raises(InvalidArgument) as exc:
        await make(store, "x" * 129)
    assert "128" in exc.value.violations[0][1]


# ------------------------------------------------------------------------------------------ reference checks


async def _reference_rejection(store: SavedVoiceStore, samples: np.ndarray, rate: int = RATE) -> str:
    with pytest.raises(InvalidArgument) as exc:
        await make(store, "ref", samples=samples, sample_rate_hz=rate)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_fields(exc.value) == ["reference_audio"]
    assert "ref" not in store
    return exc.value.violations[0][1]


async def test_reference_duration_limits(open_store: OpenStore) -> None:
    store = await open_store()
    assert "0.50 s" in await _reference_rejection(store, speech_like(0.5))
    assert "31.00 s" in await _reference_rejection(store, speech_like(31.0))
    assert (await make(store, "shortest", samples=speech_like(1.0))).duration_s == pytest.approx(1.0)
    assert (await make(store, "longest", samples=speech_like(30.0))).duration_s == pytest.approx(30.0)
    assert await persisted(open_store) == ["longest", "shortest"]


async def test_reference_duration_limits_are_configurable(open_store: OpenStore) -> None:
    store = await open_store(min_reference_s=2.0, max_reference_s=3.0)
    await _reference_rejection(store, speech_like(1.5))
    await _reference_rejection(store, speech_like(3.5))
    assert (await make(store, "ok", samples=speech_like(2.5))).name == "ok"


async def test_silent_and_near_silent_references_are_rejected(open_store: OpenStore) -> None:
    store = await open_store()
    rng = np.random.default_rng(1)
    assert "silent" in await _reference_rejection(store, np.zeros(3 * RATE, np.float32))
    assert "silent" in await _reference_rejection(store, rng.normal(0.0, 1e-5, 3 * RATE).astype(np.float32))
    # A quiet room's noise floor (about -60 dBFS) is not a voice either.
    assert "silent" in await _reference_rejection(store, rng.normal(0.0, 1e-3, 3 * RATE).astype(np.float32))
    # Nor is one loud click in silence, although its peak is full scale.
    click = np.zeros(3 * RATE, np.float32)
    click[RATE] = 1.0
    assert "silent" in await _reference_rejection(store, click)
    assert await persisted(open_store) == []


async def test_quiet_but_real_speech_is_accepted(open_store: OpenStore) -> None:
    store = await open_store()
    normal = speech_like(3.0)
    assert -25 < rms_dbfs(normal) < -10  # the test signal sits at a normal speech level
    assert (await make(store, "normal", samples=normal)).name == "normal"
    quiet = speech_like(3.0, peak=0.03)  # about 20 dB below normal
    assert rms_dbfs(quiet) < -30
    assert (await make(store, "quiet", samples=quiet)).name == "quiet"
    # Two seconds of speech in a 30 s clip of silence is still a usable reference.
    sparse = np.zeros(30 * RATE, np.float32)
    sparse[5 * RATE : 7 * RATE] = speech_like(2.0)
    assert rms_dbfs(sparse) < -30
    assert (await make(store, "sparse", samples=sparse)).name == "sparse"


async def test_non_finite_and_non_mono_references_are_rejected(open_store: OpenStore) -> None:
    store = await open_store()
    for bad_value in (np.nan, np.inf, -np.inf):
        samples = speech_like(2.0)
        samples[1234] = bad_value
        assert "index 1234" in await _reference_rejection(store, samples)
    stereo = np.stack([speech_like(2.0), speech_like(2.0)], axis=1)
    assert "mono" in await _reference_rejection(store, stereo)
    assert await persisted(open_store) == []


async def test_bad_sample_rate_is_rejected(open_store: OpenStore) -> None:
    store = await open_store()
    for rate in (0, -16_000, 4000, 500_000):
        with pytest.raises(InvalidArgument) as exc:
            await make(store, "rate", samples=speech_like(2.0), sample_rate_hz=rate)
        assert violation_fields(exc.value) == ["sample_rate_hz"]
    assert await persisted(open_store) == []


async def test_text_length_limits_and_all_problems_reported_together(open_store: OpenStore) -> None:
    store = await open_store()
    assert (await make(store, "max-text", reference_text="a" * MAX_REFERENCE_TEXT_CHARS)).reference_text == "a" * 1000
    assert (await make(store, "max-desc", description="d" * MAX_DESCRIPTION_CHARS)).description == "d" * 500
    with pytest.raises(InvalidArgument) as exc:
        await store.create(
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
        await make(store, "ctrl", reference_text="hello\x1bworld")
    assert violation_fields(control.value) == ["reference_text"]
    assert await persisted(open_store) == ["max-desc", "max-text"]


# --------------------------------------------------------------------------------------------------- quotas


async def test_quota_by_count_and_recovery_after_delete(open_store: OpenStore) -> None:
    store = await open_store(max_voices=2)
    await make(store, "one")
    await make(store, "two")
    with pytest.raises(ResourceExhausted) as exc:
        await make(store, "three")
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 of 2 voices" in exc.value.message and "delete" in exc.value.message
    assert await persisted(open_store) == ["one", "two"]
    # The count is of what is stored: another store (restart or replica) with the same limit refuses too.
    with pytest.raises(ResourceExhausted):
        await make(await open_store(max_voices=2), "three")
    await store.delete("one")
    assert (await make(store, "three")).name == "three"
    assert [v.name for v in store.list()] == ["three", "two"]


async def test_quota_by_bytes_and_recovery_after_delete(open_store: OpenStore) -> None:
    first = await open_store()
    a = await make(first, "a")
    b = await make(first, "b")
    used = a.size_bytes + b.size_bytes
    assert total_bytes(first) == used

    # Room for the two saved voices and half a third of the same size (not "size - 1": the metadata's create_time
    # is a float whose printed length varies by a digit, so a third voice can be a byte smaller than the first).
    store = await open_store(max_total_bytes=used + a.size_bytes // 2)
    assert total_bytes(store) == used
    with pytest.raises(ResourceExhausted) as exc:
        await make(store, "c")
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "storage limit" in exc.value.message and "delete" in exc.value.message
    assert await persisted(open_store) == ["a", "b"]
    # A shorter clip fits in the space left.
    assert (await make(store, "short", samples=speech_like(1.0))).name == "short"
    await store.delete("a")
    assert (await make(store, "c")).name == "c"


async def test_voice_larger_than_the_whole_byte_quota_says_to_shorten_it(open_store: OpenStore) -> None:
    store = await open_store(max_total_bytes=100_000)  # about 1.5 s of 16 kHz float32
    with pytest.raises(ResourceExhausted) as exc:
        await make(store, "big", samples=speech_like(3.0))
    assert "shorter" in exc.value.message
    assert await persisted(open_store) == []


# --------------------------------------------------------------------------------------------- concurrency


async def _race(count: int, action: object) -> tuple[list[object], list[BaseException]]:
    outcomes = await asyncio.gather(*(action(i) for i in range(count)), return_exceptions=True)  # type: ignore[operator]
    results = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return results, errors


async def test_concurrent_creates_of_one_name_let_exactly_one_through(open_store: OpenStore, store_kind: str) -> None:
    # PostgreSQL: two stores on one database, as two gateway replicas. The directory store serves one replica: its
    # creates race in worker threads of one process.
    stores = [await open_store(), await open_store()]
    if store_kind == "directory":
        stores = stores[:1]
    clips = [speech_like(2.0, seed=i) for i in range(8)]
    results, errors = await _race(8, lambda i: make(stores[i % len(stores)], "same", samples=clips[i]))
    winners = [r for r in results if isinstance(r, SavedVoice)]
    assert len(winners) == 1, errors
    assert len(errors) == 7 and all(isinstance(e, AlreadyExists) for e in errors), errors
    assert await persisted(open_store) == ["same"]
    reloaded = (await open_store()).get("same")
    assert np.array_equal(reloaded.samples, winners[0].samples)


async def test_concurrent_creates_respect_the_count_quota(open_store: OpenStore, store_kind: str) -> None:
    stores = [await open_store(max_voices=3), await open_store(max_voices=3)]
    if store_kind == "directory":
        stores = stores[:1]  # one replica: the directory store's lock is per process
    results, errors = await _race(8, lambda i: make(stores[i % len(stores)], f"voice-{i}", samples=speech_like(1.5)))
    assert len(results) == 3
    assert len(errors) == 5 and all(isinstance(e, ResourceExhausted) for e in errors), errors
    assert await persisted(open_store) == sorted(v.name for v in results)  # type: ignore[attr-defined]

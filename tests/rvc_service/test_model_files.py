"""What the models directory may expose, through the real service process: ListModels shows exactly what LoadModel
accepts (a .pth whose resolved path is inside the directory), and an unreadable checkpoint is reported as such
before anything else (issue 9, item 12). Real files: symlinks, random bytes, tiny checkpoints in the WebUI format."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.rvc_service import RvcServiceProcess, start_rvc_service
from voice.v1 import voice_conversion_pb2, voice_conversion_pb2_grpc

factories = pytest.importorskip("tests.rvc.factories")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

OUTSIDE_TARGET = Path("/etc/passwd")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model_files")
    models, elsewhere = root / "models", root / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    factories.write_checkpoint(models / "alto.pth", "v2", True, 40000)
    (models / "alias.pth").symlink_to("alto.pth")  # inside the directory: allowed
    target = OUTSIDE_TARGET if OUTSIDE_TARGET.is_file() else (elsewhere / "passwd")
    if not target.exists():
        target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (models / "passwd.pth").symlink_to(target)  # leads out of the directory
    factories.write_checkpoint(elsewhere / "real.pth", "v2", True, 40000, seed=3)
    (models / "escape.pth").symlink_to(elsewhere / "real.pth")  # a valid checkpoint, but outside
    factories.write_index(elsewhere / "outside.index", 768)
    (models / "alto.index").symlink_to(elsewhere / "outside.index")  # an index outside is not the model's index
    (models / "dangling.pth").symlink_to(elsewhere / "missing.pth")
    (models / "random.pth").write_bytes(os.urandom(4096))
    return {"models": models, "elsewhere": elsewhere, "outside_target": target}


@pytest.fixture(scope="module")
def service(layout: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RvcServiceProcess]:
    # No content encoder at start: the unreadable checkpoint must be reported as such, not as a missing encoder.
    proc = start_rvc_service("--models-dir", str(layout["models"]), log_dir=tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


@pytest.fixture
async def stub(service: RvcServiceProcess) -> AsyncIterator[voice_conversion_pb2_grpc.VoiceConversionServiceStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield voice_conversion_pb2_grpc.VoiceConversionServiceStub(channel)


async def load_error(stub, name: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LoadModel(voice_conversion_pb2.LoadModelRequest(name=name))
    return err.value


def assert_no_server_path(err: grpc.aio.AioRpcError, layout: dict[str, Path]) -> None:
    text = (err.details() or "") + repr(err.trailing_metadata())
    for path in layout.values():
        assert str(path) not in text
    assert "/tmp" not in text and "Traceback" not in text


async def test_listing_shows_only_what_loading_accepts(stub, layout: dict[str, Path]) -> None:
    models = {m.name: m for m in (await stub.ListModels(voice_conversion_pb2.ListModelsRequest())).models}
    # Outside targets (a system file, a valid checkpoint elsewhere, a dangling link) are not listed at all.
    assert not {"passwd", "escape", "dangling"} & set(models)
    assert all(m.size_bytes != layout["outside_target"].stat().st_size or m.name == "alto" for m in models.values())
    # A symlink inside the directory is listed, with the size of the file it points to; the index symlinked from
    # outside does not count as the model's index.
    size = (layout["models"] / "alto.pth").stat().st_size
    assert models["alias"].size_bytes == models["alto"].size_bytes == size
    assert not models["alto"].has_index
    assert "random" in models  # a file in the directory is listed; loading it says what is wrong with it

    # Everything listed is accepted by name; everything not listed is refused.
    for name in ("passwd", "escape"):
        err = await load_error(stub, name)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "outside the models directory" in err.details()
        assert_no_server_path(err, layout)
    err = await load_error(stub, "dangling")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert_no_server_path(err, layout)


async def test_unreadable_checkpoint_is_named_before_the_missing_encoder_then_link_loads(
    stub, layout: dict[str, Path]
) -> None:
    err = await load_error(stub, "random")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "model 'random': checkpoint is not a readable RVC .pth (not a PyTorch checkpoint)"
    assert "encoder" not in err.details() and "weights_only" not in err.details()
    assert_no_server_path(err, layout)
    # A readable checkpoint gets as far as the encoder, which is the real problem in this directory.
    err = await load_error(stub, "alias")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no content encoder" in err.details()
    assert_no_server_path(err, layout)

    # The symlink inside the directory loads once an encoder is installed (the registry looks for it on each load).
    factories.write_hf_hubert(layout["models"] / "hubert")
    reply = await stub.LoadModel(voice_conversion_pb2.LoadModelRequest(name="alias"))
    assert reply.model.loaded and reply.model.name == "alias" and reply.model.sample_rate_hz == 40000
    assert not reply.model.has_index
    err = await load_error(stub, "random")  # still the checkpoint's own problem now that an encoder exists
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "not a readable RVC .pth" in err.details()
    err = await load_error(stub, "passwd")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

"""`voice-models` (the installed console script, as a user runs it) against the local stand-in of the Hub.

Each scenario drives the real command in a subprocess with HF_ENDPOINT on the stand-in (tests/models/hub_standin.py),
and checks the files it leaves with the backend registry's own layout check, the bytes against the served ones, and
the stand-in's request log for what went over the wire (pinned commit, Range resumes, no Authorization to the CDN).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.models.conftest import (
    CLI,
    GRANTED_TOKEN,
    UNGRANTED_TOKEN,
    VOICE_REPO,
    Cli,
    HubRepo,
    cli_env,
    run_cli,
)
from tests.models.hub_standin import HubStandIn
from tests.waiting import wait_until
from voice_triton import catalog, registry

pytestmark = pytest.mark.timeout(180)
SPARK = catalog.get("spark-tts-0.5b")
ORPHEUS = catalog.get("orpheus-3b-0.1-ft")
BICODEC = "BiCodec/model.safetensors"  # 25 MB in the tiny checkpoint: more than one 10 MB download chunk


def spark_repo(hub: HubStandIn) -> HubRepo:
    return hub.repos[SPARK.repo_id]


def file_requests(hub: HubStandIn, mark: int, path: str) -> list[str]:
    """The Range headers of the content requests for one Spark file since `mark` ("" for a whole-file GET)."""
    sha = spark_repo(hub).files[path].sha256
    return [r.range for r in hub.since(mark) if r.method == "GET" and r.path == f"/cdn/{sha}"]


def assert_same_files(folder: Path, repo: HubRepo, paths: list[str]) -> None:
    for path in paths:
        assert filecmp.cmp(folder / path, repo.files[path].source, shallow=False), path


def partial_download(folder: Path) -> Path | None:
    found = list((folder / ".cache" / "huggingface" / "download").rglob("*.incomplete"))
    return found[0] if found else None


def test_list_names_every_model_with_its_pin_licence_and_voices(cli: Cli, models_dir: Path) -> None:
    listed = cli("list", "--json")
    assert listed.code == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["models"]}
    assert list(rows) == catalog.names()
    for row in rows.values():
        assert row["state"] == "absent" and row["revision_pinned"] and len(row["revision"]) == 40
    assert rows["spark-tts-0.5b"]["voices"] == ["spark"] and rows["spark-tts-0.5b"]["licence"]["must_accept"]
    assert rows["orpheus-3b-0.1-ft"]["gated"] and rows["orpheus-3b-0.1-ft"]["includes"] == ["snac-24khz"]
    assert rows["orpheus-3b-0.1-ft"]["voices"] == [v.name for v in registry.get("orpheus").gateway_voices()]
    assert rows["rvc-base"]["directory"] == str(models_dir / "rvc")
    text = cli("list").stdout
    assert "pull needs --accept-license" in text and "(gated: needs a token)" in text
    assert rows["cosyvoice2-0.5b"]["voices"] == ["cosyvoice2"]


def test_pull_fetches_only_what_the_backend_loads_at_the_pinned_commit(
    cli: Cli, hub: HubStandIn, models_dir: Path
) -> None:
    mark = hub.mark()
    pulled = cli("pull", "spark-tts-0.5b", "--accept-license")
    assert pulled.code == 0, pulled.stderr
    folder = models_dir / registry.get("spark").models_dir_name
    repo = spark_repo(hub)
    loaded = [path for path in repo.files if not path.startswith(("README", "src/"))]
    on_disk = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts
    )
    assert on_disk == sorted(loaded)  # the model card and images stayed on the Hub
    assert_same_files(folder, repo, loaded)
    assert registry.get("spark").missing(folder) == []  # the launcher's check
    assert "Triton: piper (built in), spark (voices spark)" in pulled.stdout
    # Every file request named the pinned commit, not a branch.
    resolves = [r.path for r in hub.since(mark) if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{SPARK.revision}/" in path for path in resolves)
    record = catalog.Record.read(folder, SPARK.name)
    assert record is not None and record.commit == SPARK.revision and record.licence_accepted
    listed = {row["name"]: row for row in json.loads(cli("list", "--json").stdout)["models"]}
    assert listed["spark-tts-0.5b"]["state"] == "complete"

    again = hub.mark()
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    assert [r.path for r in hub.since(again)] == [f"/api/models/{SPARK.repo_id}/revision/{SPARK.revision}"]


def test_a_connection_cut_mid_file_is_resumed_with_a_range_request(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    mark = hub.mark()
    hub.cut(SPARK.repo_id, BICODEC, after=15_000_000)
    pulled = cli("pull", "spark-tts-0.5b", "--accept-license")
    assert pulled.code == 0, pulled.stderr
    assert f"connection lost while fetching {BICODEC}; resuming" in pulled.stderr
    first, second = file_requests(hub, mark, BICODEC)
    assert first == "" and second.startswith("bytes=") and 0 < int(second[6:-1]) <= 15_000_000
    assert_same_files(models_dir / "Spark-TTS-0.5B", spark_repo(hub), [BICODEC])


def test_an_interrupted_pull_exits_130_and_the_next_one_resumes(
    cli: Cli, hub: HubStandIn, models_dir: Path, tmp_path: Path
) -> None:
    folder = models_dir / "Spark-TTS-0.5B"
    stall = hub.stall(SPARK.repo_id, BICODEC, after=12_000_000)
    command = [str(CLI), "pull", "spark-tts-0.5b", "--accept-license", f"--models-dir={models_dir}"]
    env = cli_env(hub.url, tmp_path / "hf-home")
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert stall.reached.wait(60), "the download never reached the stall"
        # The first 10 MB chunk is on disk once huggingface_hub has written it.
        wait_until(lambda: (p := partial_download(folder)) and p.stat().st_size > 0, within=30, what="partial data")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        stall.released.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("voice-models: error: interrupted; what was downloaded is kept")
    partial = partial_download(folder)
    assert partial is not None
    kept = partial.stat().st_size

    mark = hub.mark()
    resumed = cli("pull", "spark-tts-0.5b", "--accept-license")
    assert resumed.code == 0, resumed.stderr
    assert file_requests(hub, mark, BICODEC) == [f"bytes={kept}-"]
    assert_same_files(folder, spark_repo(hub), [BICODEC])


def corrupt(path: Path, offset: int) -> None:
    """Flip one byte in place, keeping size and modification time: corruption nothing noticed when it happened."""
    stat = path.stat()
    with path.open("r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_verify_finds_a_corrupted_file_and_pull_fetches_it_again(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    folder = models_dir / "Spark-TTS-0.5B"
    corrupt(folder / BICODEC, 20_000_000)  # an LFS file: checked by sha256
    corrupt(folder / "config.yaml", 3)  # a small file: checked by its git blob id

    checked = cli("verify", "spark-tts-0.5b")
    assert checked.code == 1
    assert f"Spark-TTS-0.5B/{BICODEC} is corrupted (sha256" in checked.stdout
    assert "Spark-TTS-0.5B/config.yaml is corrupted (git blob id" in checked.stdout
    assert checked.error_line == (
        "voice-models: error: spark-tts-0.5b failed the check: `voice-models pull spark-tts-0.5b` fetches what is "
        "missing or corrupted"
    )
    mark = hub.mark()
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    fetched = {r.path for r in hub.since(mark) if r.method == "GET" and "/api/" not in r.path}
    repo = spark_repo(hub)
    assert fetched == {
        f"/cdn/{repo.files[BICODEC].sha256}",
        f"/{SPARK.repo_id}/resolve/{SPARK.revision}/config.yaml",
    }
    assert_same_files(folder, repo, [BICODEC, "config.yaml"])
    clean = cli("verify")
    assert clean.code == 0 and "spark-tts-0.5b: ok, sizes and hashes match the Hub's listing" in clean.stdout


def test_offline_reuses_what_is_present_and_never_calls_the_hub(
    hub_repos: list[HubRepo], models_dir: Path, tmp_path: Path
) -> None:
    own = HubStandIn(hub_repos)  # this test stops it
    with own:
        env = cli_env(own.url, tmp_path / "hf-home")
        offline = {**env, "HF_HUB_OFFLINE": "1"}

        def run(environment: dict[str, str], *args: str) -> tuple[int, str, str]:
            done = run_cli(environment, *args, f"--models-dir={models_dir}", cwd=tmp_path)
            return done.code, done.stdout, done.error_line

        assert run(env, "pull", "spark-tts-0.5b", "--accept-license")[0] == 0
        mark = own.mark()
        code, out, _ = run(offline, "pull", "spark-tts-0.5b", "--accept-license")
        assert code == 0 and "present in" in out and "offline: not checked against the Hub" in out
        assert run(offline, "verify", "spark-tts-0.5b")[0] == 0
        assert own.since(mark) == []
    # The stand-in is gone: offline works the same, and online falls back to the complete copy.
    assert run(offline, "pull", "spark-tts-0.5b", "--accept-license")[0] == 0
    code, out, error = run(offline, "pull", "orpheus-3b-0.1-ft")
    assert code == 5 and error.startswith(
        "voice-models: error: offline (HF_HUB_OFFLINE=1) and orpheus-3b-0.1-ft is not complete"
    )
    assert error.endswith("unset HF_HUB_OFFLINE to download it")
    done = run_cli(env, "pull", "spark-tts-0.5b", "--accept-license", f"--models-dir={models_dir}", cwd=tmp_path)
    assert done.code == 0 and f"cannot reach the Hub at {own.url}" in done.stderr
    code, _, error = run(env, "pull", "orpheus-3b-0.1-ft")
    assert code == 5 and error.startswith(f"voice-models: error: cannot reach the Hub at {own.url}")


def test_a_gated_repository_names_its_page_and_the_token(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    page = f"https://huggingface.co/{ORPHEUS.repo_id}"
    refused = cli("pull", "orpheus-3b-0.1-ft")
    assert refused.code == 7
    assert refused.error_line == (
        f"voice-models: error: {ORPHEUS.repo_id} is gated: log in at {page}, accept its terms, then pass a token of "
        "that account (--token or HF_TOKEN)"
    )
    no_access = cli("pull", "orpheus-3b-0.1-ft", env={"HF_TOKEN": UNGRANTED_TOKEN})
    assert no_access.code == 7 and f"has no access yet: accept its terms at {page}" in no_access.error_line
    folder = ORPHEUS.directory(models_dir)
    assert not any(p.is_file() for p in folder.glob("*"))  # nothing but the download record

    mark = hub.mark()
    granted = cli("pull", "orpheus-3b-0.1-ft", "--token", GRANTED_TOKEN)
    assert granted.code == 0, granted.stderr
    assert registry.get("orpheus").missing(folder) == []  # SNAC went into snac/, where the backend reads it
    assert_same_files(folder / "snac", hub.repos["hubertsiuzdak/snac_24khz"], ["config.json", "pytorch_model.bin"])
    assert "orpheus (voices orpheus-tara," in granted.stdout
    requests = hub.since(mark)
    # The token went to the Hub, never to the CDN host (huggingface_hub drops it on the redirect, as for the Hub's).
    assert all(r.authorized for r in requests if "/resolve/" in r.path)
    assert not any(r.authorized for r in requests if r.path.startswith("/cdn/"))


def test_a_licence_must_be_accepted(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    mark = hub.mark()
    refused = cli("pull", "spark-tts-0.5b")
    assert refused.code == 4
    assert refused.error_line.startswith("voice-models: error: spark-tts-0.5b is licensed CC-BY-NC-SA-4.0")
    assert refused.error_line.endswith(f"read {SPARK.licence.url} and pass --accept-license to download it")
    assert hub.since(mark) == [] and not models_dir.exists()


def test_unknown_names_are_refused_with_the_known_ones(cli: Cli) -> None:
    known = ", ".join(catalog.names())
    for command in ("pull", "verify", "rm"):
        refused = cli(command, "spark")
        assert refused.code == 3
        assert refused.error_line == f"voice-models: error: unknown model 'spark': known are {known}"


def in_namespace(setup: str, mountpoint: Path) -> list[str] | None:
    """A command prefix running the rest in a user and mount namespace of its own after `setup` (shell, the mountpoint
    is "$0"), so the test can mount a filesystem without privileges; None where namespaces are not allowed."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f'{setup} && exec "$@"', str(mountpoint)]
    mountpoint.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_a_full_disk_is_refused_before_downloading(hub: HubStandIn, models_dir: Path, tmp_path: Path) -> None:
    # A 4 MB tmpfs: a disk that is really full for a 35 MB checkpoint.
    prefix = in_namespace('mount -t tmpfs -o size=4m voice-models-test "$0"', models_dir)
    if prefix is None:
        pytest.skip("no user and mount namespaces here (unshare refused): no small filesystem to fill")
    env = cli_env(hub.url, tmp_path / "hf-home")
    done = subprocess.run(
        [*prefix, str(CLI), "pull", "spark-tts-0.5b", "--accept-license", f"--models-dir={models_dir}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(
        rf"voice-models: error: no space left for spark-tts-0.5b in {models_dir / 'Spark-TTS-0.5B'}: "
        r"it needs 3\d\.\d MB, 4\.\d MB free",
        done.stderr.strip().splitlines()[-1],
    )


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (5_000_000, 5_000_000))


def test_a_write_failing_mid_file_keeps_the_partial_data(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    """The nearest honest stand-in for a disk filling up mid-file: the kernel's per-process file-size limit
    (RLIMIT_FSIZE), which fails the write with EFBIG just as a full disk fails it with ENOSPC; the command treats
    both alike."""
    stopped = cli("pull", "spark-tts-0.5b", "--accept-license", limit=limit_file_size)
    assert stopped.code == 1
    target = models_dir / "Spark-TTS-0.5B" / BICODEC
    assert stopped.error_line == (
        f"voice-models: error: cannot write {target}: File too large; the partial download is kept: free some space "
        "and run the same command again to resume"
    )
    partial = partial_download(models_dir / "Spark-TTS-0.5B")
    assert partial is not None and partial.stat().st_size == 5_000_000
    mark = hub.mark()
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    assert file_requests(hub, mark, BICODEC) == ["bytes=5000000-"]
    assert_same_files(models_dir / "Spark-TTS-0.5B", spark_repo(hub), [BICODEC])


def test_an_unwritable_models_dir_is_one_line(hub: HubStandIn, models_dir: Path, tmp_path: Path) -> None:
    models_dir.mkdir()
    # A read-only mount of the folder (what a read-only volume gives); root writes through permission bits, so those
    # are the fallback only for other users.
    prefix = in_namespace('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"', models_dir)
    if prefix is None:
        if os.geteuid() == 0:
            pytest.skip("as root without mount namespaces nothing here is unwritable")
        models_dir.chmod(0o555)
        prefix = []
    env = cli_env(hub.url, tmp_path / "hf-home")
    done = subprocess.run(
        [*prefix, str(CLI), "pull", "spark-tts-0.5b", "--accept-license", f"--models-dir={models_dir}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    models_dir.chmod(0o755)
    reason = "Read-only file system" if prefix else "Permission denied"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"voice-models: error: cannot write to {models_dir / 'Spark-TTS-0.5B'}: {reason}"
    )


def test_rvc_assets_and_a_user_voice_share_the_conversion_folder(cli: Cli, hub: HubStandIn, models_dir: Path) -> None:
    rvc = models_dir / "rvc"
    assert cli("pull", "rvc-base").code == 0
    assert sorted(p.name for p in rvc.iterdir() if p.is_file()) == ["hubert_base.pt", "rmvpe.pt"]
    index = "added_IVF256_Flat_nprobe_1_alice_v2.index"
    voice = cli("pull-rvc", VOICE_REPO, "--pth", "weights/alice.pth", "--index", index)
    assert voice.code == 0, voice.stderr
    repo = hub.repos[VOICE_REPO]
    assert filecmp.cmp(rvc / "alice.pth", repo.files["weights/alice.pth"].source, shallow=False)
    assert filecmp.cmp(rvc / "alice.index", repo.files[index].source, shallow=False)
    assert (rvc / "alice.pth").stat().st_nlink == 2  # a hard link to huggingface_hub's copy, no second copy
    assert "RVC voices alice" in voice.stdout and "hubert_base.pt, rmvpe.pt" in voice.stdout

    renamed = cli("pull-rvc", VOICE_REPO, "--pth", "weights/alice.pth", "--name", "../alice")
    assert renamed.code == 2 and "--name '../alice'" in renamed.error_line

    removed = cli("rm", "rvc-base")
    assert removed.code == 0
    assert sorted(p.name for p in rvc.iterdir() if p.is_file()) == ["alice.index", "alice.pth"]
    listed = {row["name"]: row for row in json.loads(cli("list", "--json").stdout)["models"]}
    assert listed["rvc-base"]["state"] == "absent"
    assert cli("rm", "rvc-base").stdout.startswith("rvc-base: nothing to remove")


def test_rm_removes_the_folder_and_verify_reports_absence(cli: Cli, models_dir: Path) -> None:
    assert cli("pull", "spark-tts-0.5b", "--accept-license").code == 0
    removed = cli("rm", "spark-tts-0.5b")
    assert removed.code == 0 and not (models_dir / "Spark-TTS-0.5B").exists()
    assert cli("verify").stdout.strip() == f"nothing pulled in {models_dir}"
    missing = cli("verify", "spark-tts-0.5b")
    assert missing.code == 1 and "spark-tts-0.5b: absent from" in missing.stdout

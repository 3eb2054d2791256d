"""voice-models: fetch the published checkpoints into the models directory, check them, remove them.

    voice-models list [--json]
    voice-models pull spark-tts-0.5b --accept-license     # then `make run` serves the voice `spark`
    voice-models pull orpheus-3b-0.1-ft --token hf_...     # gated: accept its terms on the Hub first
    voice-models pull-rvc OWNER/REPO --pth voice.pth [--index added.index] [--name alice]
    voice-models verify [NAME...]
    voice-models rm NAME...

Every command takes --models-dir (env VOICE_MODELS_DIR, default ./models; `make run` reads models/ of the checkout).
The models and their pinned commits are the catalog's (voice_triton.catalog). `pull` downloads with huggingface_hub
at that commit, only the files the backend loads, straight into the folder the launcher reads, with progress bars;
an interrupted download resumes where it stopped on the next run (a connection lost mid-file is resumed at once, a
few times). Then it checks the folder with the launcher's own layout check and prints what the stack now serves.
The token comes from --token, else HF_TOKEN (or huggingface_hub's stored login). HF_HUB_OFFLINE=1 uses what is present
and never touches the network; HF_ENDPOINT points at a mirror.

A failure prints one line, `voice-models: error: ...`, never a traceback, and exits with:
  0 success; 1 local problem (no space left, a folder that cannot be written, a check that failed); 2 bad command
  line; 3 unknown model name; 4 licence not accepted; 5 Hub unreachable, or offline with files missing; 7 no access
  (gated or private repository, token refused); 8 another Hub error; 130 interrupted (run it again to resume).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from voice_triton import catalog, registry
from voice_triton.catalog import Entry, Record, RecordedFile

PROG = "voice-models"
EXIT_OK = 0
EXIT_LOCAL = 1
EXIT_USAGE = 2  # argparse's own status
EXIT_UNKNOWN = 3
EXIT_LICENCE = 4
EXIT_UNAVAILABLE = 5
EXIT_NO_ACCESS = 7
EXIT_HUB = 8
EXIT_INTERRUPTED = 130
# A connection lost mid-file is resumed (HTTP Range from the bytes already on disk) this many times in one run.
ATTEMPTS = 5
RETRY_DELAY_S = 1.0
HASH_BLOCK = 8 << 20
# The conversion service's rule for a model name (services/rvc_service/registry.py): a plain file stem.
RVC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class Failure(Exception):
    """One line for the user and the exit status that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(message, flush=True)


def notice(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# --------------------------------------------------------------------------------------------------------------------
# The Hub
# --------------------------------------------------------------------------------------------------------------------


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_failure(error: BaseException, repo_id: str, revision: str, token: str | None) -> Failure | None:
    """The user's line for an error of huggingface_hub or requests; None when it is none of theirs."""
    import requests
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{repo_id}"
    has_token = bool(token or get_token())
    if isinstance(error, GatedRepoError):
        if error.response is not None and error.response.status_code == 403:
            return Failure(
                f"{repo_id} is gated and this token's account has no access yet: accept its terms at {page} "
                "(the authors may have to approve the request), then run this again",
                EXIT_NO_ACCESS,
            )
        if has_token:
            return Failure(f"{repo_id} is gated and the Hub refused the token (--token or HF_TOKEN)", EXIT_NO_ACCESS)
        return Failure(
            f"{repo_id} is gated: log in at {page}, accept its terms, then pass a token of that account "
            "(--token or HF_TOKEN)",
            EXIT_NO_ACCESS,
        )
    if isinstance(error, RevisionNotFoundError):
        return Failure(f"{repo_id} has no revision {revision}", EXIT_HUB)
    if isinstance(error, EntryNotFoundError):
        return Failure(f"{repo_id}@{revision} lacks a file the catalog names: {error}", EXIT_HUB)
    if isinstance(error, RepositoryNotFoundError):
        why = "the Hub refused the token" if has_token else "private repositories need a token (--token or HF_TOKEN)"
        return Failure(f"{repo_id} was not found or cannot be read: {why}", EXIT_NO_ACCESS)
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else 0
        if status in (401, 403):
            return Failure(f"the Hub refused access to {repo_id} (HTTP {status}): check the token", EXIT_NO_ACCESS)
        return Failure(f"the Hub answered HTTP {status} for {repo_id}; try again later", EXIT_HUB)
    if isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return Failure(f"cannot reach the Hub at {endpoint()} for {repo_id}", EXIT_UNAVAILABLE)
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return Failure(f"cannot reach the Hub at {endpoint()}: {type(error).__name__}", EXIT_UNAVAILABLE)
    return None


def transient(error: BaseException) -> bool:
    """A connection lost or timed out (also when huggingface_hub wrapped it): worth resuming at once."""
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None:
        error = error.__cause__
    return isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def download(repo_id: str, filename: str, revision: str, folder: Path, token: str | None) -> Path:
    """One file into `folder` (huggingface_hub's local_dir: partial data kept, resumed with HTTP Range)."""
    from huggingface_hub import hf_hub_download

    for attempt in range(1, ATTEMPTS + 1):
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=folder, token=token))
        except OSError as error:
            if transient(error):
                if attempt == ATTEMPTS:
                    raise Failure(
                        f"lost the connection to {endpoint()} {ATTEMPTS} times while fetching {filename}; "
                        "run the same command again to resume",
                        EXIT_UNAVAILABLE,
                    ) from error
                notice(f"connection lost while fetching {filename}; resuming (attempt {attempt + 1} of {ATTEMPTS})")
                time.sleep(RETRY_DELAY_S * attempt)
                continue
            failure = hub_failure(error, repo_id, revision, token)
            if failure is not None:
                raise failure from error
            raise write_failure(error, folder / filename) from error
    raise AssertionError("unreachable")


def write_failure(error: OSError, path: Path) -> Failure:
    if error.errno in SPACE_ERRNOS:
        return Failure(
            f"cannot write {path}: {error.strerror}; the partial download is kept: free some space and run the same "
            "command again to resume",
            EXIT_LOCAL,
        )
    if error.errno is None:  # huggingface_hub's own consistency checks (a size that does not match)
        return Failure(f"download of {path.name} failed: {' '.join(str(error).split())}", EXIT_HUB)
    return Failure(f"cannot write {error.filename or path}: {error.strerror}", EXIT_LOCAL)


# --------------------------------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------------------------------


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".voice-models-probe-"):
            pass
    except OSError as error:
        raise Failure(f"cannot write to {error.filename or folder}: {error.strerror}", EXIT_LOCAL) from error


def download_record_path(folder: Path, path: str) -> Path:
    # huggingface_hub's documented local_dir layout: `.cache/huggingface/download/<path>.metadata` (commit, etag,
    # time). Without it, the next download re-hashes the file against the Hub's etag and fetches it if it differs.
    return folder / catalog.HF_DOWNLOAD_DIR / "download" / f"{path}.metadata"


def forget_download(folder: Path, path: str) -> None:
    download_record_path(folder, path).unlink(missing_ok=True)


def partial_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / catalog.HF_DOWNLOAD_DIR / "download").rglob("*.incomplete"))


def file_hash(path: Path, item: RecordedFile) -> tuple[str, str]:
    """(kind, hex digest) as the Hub states it: sha256 of an LFS file's content, git's blob id of a small one."""
    if item.sha256:
        digest, kind, expected = hashlib.sha256(), "sha256", item.sha256
    else:
        digest, kind, expected = hashlib.sha1(usedforsecurity=False), "git blob id", item.git_oid or ""
        digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
    return kind, "" if digest.hexdigest() == expected else digest.hexdigest()


def served_lines(models_dir: Path) -> list[str]:
    """What the stack serves from `models_dir`: the launcher's backends and the conversion service's assets."""
    backends = ["piper (built in)"]
    for backend in registry.BACKENDS:
        folder = models_dir / backend.models_dir_name
        if not backend.embedded and folder.is_dir() and not backend.missing(folder):
            backends.append(f"{backend.name} (voices {', '.join(voice_names(backend))})")
    rvc = catalog.rvc_directory(models_dir)
    assets = [name for name in ("hubert_base.pt", "hubert", "rmvpe.pt") if (rvc / name).exists()]
    voices = sorted(p.stem for p in rvc.glob("*.pth"))
    conversion = "WORLD voices" + (f"; RVC voices {', '.join(voices)}" if voices else "")
    conversion += f"; from {rvc}: {', '.join(assets)}" if assets else ""
    return [f"  Triton: {', '.join(backends)}", f"  conversion service: {conversion}"]


def voice_names(backend: registry.Backend) -> list[str]:
    try:
        return [voice.name for voice in backend.gateway_voices()]
    except (ImportError, OSError, KeyError):
        # The speakers are read from the model repository's config, which an installed copy may not find.
        return [f"{backend.voice_prefix}<speaker>"]


def print_served(models_dir: Path) -> None:
    say(f"Served from {models_dir} (`make run` serves models/ of the checkout; run_stack.py and triton/launch.py take")
    say("--models-dir):")
    for line in served_lines(models_dir):
        say(line)


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------


def entries(names: Iterable[str]) -> list[Entry]:
    try:
        return [catalog.get(name) for name in dict.fromkeys(names)]
    except catalog.UnknownModel as error:
        raise Failure(str(error), EXIT_UNKNOWN) from None


def describe(entry: Entry, models_dir: Path) -> dict[str, Any]:
    found = catalog.state(entry, models_dir)
    backend = registry.get(entry.backend) if entry.backend else None
    return {
        "name": entry.name,
        "title": entry.title,
        "repo_id": entry.repo_id,
        "revision": entry.revision,
        "revision_pinned": entry.revision_pinned,
        "revision_source": entry.revision_source,
        "size_bytes": entry.size_bytes,
        "licence": {
            "spdx": entry.licence.spdx,
            "url": entry.licence.url,
            "note": entry.licence.note,
            "must_accept": entry.licence.must_accept,
        },
        "gated": entry.gated,
        "backend": entry.backend,
        "voices": voice_names(backend) if backend else [],
        "enables": entry.enables or (f"backend {entry.backend}" if entry.backend else ""),
        "includes": list(entry.includes),
        "directory": str(found.directory),
        "state": "complete" if found.complete else "incomplete" if found.present else "absent",
        "missing": list(found.missing) if found.present else [],
    }


def cmd_list(args: argparse.Namespace) -> int:
    rows = [describe(entry, args.models_dir) for entry in catalog.CATALOG]
    if args.json:
        json.dump({"models_dir": str(args.models_dir), "models": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    say(f"models directory: {args.models_dir}")
    for row in rows:
        state = row["state"] + (f" (missing {', '.join(row['missing'])})" if row["missing"] else "")
        revision = (
            row["revision"] if row["revision_pinned"] else f"{row['revision']} (unpinned: {row['revision_source']})"
        )
        licence = row["licence"]
        terms = licence["spdx"] + (f"; {licence['note']}" if licence["note"] else "")
        if licence["must_accept"]:
            terms += "; pull needs --accept-license"
        say(f"\n{row['name']}  {state}  {row['directory']}")
        say(f"  {row['title']}")
        say(f"  repo     {row['repo_id']} @ {revision}" + ("  (gated: needs a token)" if row["gated"] else ""))
        say(
            f"  size     ~{human(row['size_bytes'])}"
            + (f", with {', '.join(row['includes'])}" if row["includes"] else "")
        )
        say(f"  licence  {terms} ({licence['url']})")
        enables = row["enables"] + (f": voices {', '.join(row['voices'])}" if row["voices"] else "")
        say(f"  enables  {enables}")
    rvc_voices = sorted(p.stem for p in catalog.rvc_directory(args.models_dir).glob("*.pth"))
    if rvc_voices:
        say(f"\nRVC voices in {catalog.rvc_directory(args.models_dir)}: {', '.join(rvc_voices)}")
    return EXIT_OK


def fetch(part: Entry, models_dir: Path, token: str | None, accepted: bool) -> None:
    """One repository's allowed files into the part's folder, at the pinned revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    folder = part.directory(models_dir)
    found = catalog.state(part, models_dir)
    if offline():
        if found.complete:
            say(f"{part.name}: present in {folder} (offline: not checked against the Hub)")
            return
        raise Failure(
            f"offline (HF_HUB_OFFLINE=1) and {part.name} is not complete in {folder} (missing "
            f"{', '.join(found.missing)}): unset HF_HUB_OFFLINE to download it",
            EXIT_UNAVAILABLE,
        )
    ensure_writable(folder)
    try:
        info = HfApi().model_info(part.repo_id, revision=part.revision, files_metadata=True, token=token)
    except Exception as error:
        failure = hub_failure(error, part.repo_id, part.revision, token)
        if failure is None:
            raise
        if failure.code == EXIT_UNAVAILABLE and found.complete:
            notice(f"{failure}; keeping the complete {part.name} in {folder}")
            return
        raise failure from error
    siblings = list(
        filter_repo_objects(info.siblings or [], allow_patterns=list(part.files), key=lambda s: s.rfilename)
    )
    if not siblings or not info.sha:
        raise Failure(f"{part.repo_id}@{part.revision} lists none of the files {part.name} takes", EXIT_HUB)
    files = tuple(
        RecordedFile(s.rfilename, s.size or 0, sha256=s.lfs.sha256 if s.lfs else None,
                     git_oid=None if s.lfs else s.blob_id)
        for s in siblings
    )  # fmt: skip
    # Written first: a pull cut short leaves the list of what is still to come.
    Record(part.name, part.repo_id, part.revision, info.sha, files, accepted).write(folder)
    for item in files:
        if not _same_size(folder / item.path, item.size):
            forget_download(folder, item.path)  # a file of the wrong size is fetched again, not trusted
    # Without a download record (never fetched, cut short, or failed `verify`) huggingface_hub checks the file
    # against the Hub's etag and fetches it again if it differs.
    todo = [item for item in files if not download_record_path(folder, item.path).is_file()]
    need = sum(item.size for item in todo) - partial_bytes(folder)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise Failure(
            f"no space left for {part.name} in {folder}: it needs {human(need)}, {human(free)} free", EXIT_LOCAL
        )
    if not todo:
        say(f"{part.name}: complete in {folder} ({part.repo_id} @ {info.sha[:12]})")
        return
    total = human(sum(item.size for item in todo))
    say(f"{part.name}: {part.repo_id} @ {info.sha[:12]} -> {folder} ({len(todo)} of {len(files)} files, {total})")
    for item in files:
        path = download(part.repo_id, item.path, info.sha, folder, token)
        if not _same_size(path, item.size):
            raise Failure(f"{path} has {path.stat().st_size} bytes, the Hub lists {item.size}", EXIT_HUB)


def _same_size(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def cmd_pull(args: argparse.Namespace) -> int:
    chosen = entries(args.names)
    for entry in chosen:
        for part in entry.parts():
            if part.licence.must_accept and not args.accept_license:
                raise Failure(
                    f"{part.name} is licensed {part.licence.spdx} ({part.licence.note}): read {part.licence.url} "
                    "and pass --accept-license to download it",
                    EXIT_LICENCE,
                )
    for entry in chosen:
        for part in entry.parts():
            fetch(part, args.models_dir, args.token, args.accept_license)
        missing = entry.missing(args.models_dir)
        if missing:
            raise Failure(
                f"{entry.name} was downloaded but {entry.directory(args.models_dir)} still lacks {', '.join(missing)}",
                EXIT_HUB,
            )
    print_served(args.models_dir)
    return EXIT_OK


def cmd_pull_rvc(args: argparse.Namespace) -> int:
    name = args.name or Path(args.pth).stem
    if not RVC_NAME.match(name):
        raise Failure(f"--name {name!r}: letters, digits, '.', '_', '-' and spaces only (at most 128)", EXIT_USAGE)
    rvc = catalog.rvc_directory(args.models_dir)
    # huggingface_hub keeps each repository's files (and partial downloads) in a hidden folder of its own; the voice
    # is a hard link to them, a plain file where the conversion service looks (it refuses symlinks leaving its dir).
    staging = rvc / ".voice-models" / args.repo_id.replace("/", "--")
    if not offline():
        ensure_writable(staging)
    say(f"RVC voice {name}: {args.repo_id} @ {args.revision} -> {rvc}")
    placed = []
    for source, suffix in ((args.pth, ".pth"), (args.index, ".index")):
        if not source:
            continue
        if offline() and not (staging / source).is_file():
            raise Failure(
                f"offline (HF_HUB_OFFLINE=1) and {source} of {args.repo_id} was never downloaded", EXIT_UNAVAILABLE
            )
        staged = download(args.repo_id, source, args.revision, staging, args.token)
        target = rvc / f"{name}{suffix}"
        tmp = rvc / f".{name}{suffix}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(staged, tmp)
        except OSError:
            shutil.copyfile(staged, tmp)
        os.replace(tmp, target)
        placed.append(target.name)
    say(f"  placed {', '.join(placed)}")
    print_served(args.models_dir)
    return EXIT_OK


def check(entry: Entry, models_dir: Path) -> list[str]:
    """Problems of one entry: layout entries missing, recorded files missing, of the wrong size or hash. A file
    whose content differs loses its download record, so the next pull fetches it again."""
    problems = [f"missing {item}" for item in entry.missing(models_dir)]
    for part in entry.parts():
        folder = part.directory(models_dir)
        record = Record.read(folder, part.name)
        if record is None:
            continue
        for item in record.files:
            path = folder / item.path
            if not path.is_file():
                problems.append(f"missing {path.relative_to(models_dir)}")
            elif path.stat().st_size != item.size:
                problems.append(
                    f"{path.relative_to(models_dir)} has {path.stat().st_size} bytes, the Hub lists {item.size}"
                )
                forget_download(folder, item.path)
            else:
                kind, actual = file_hash(path, item)
                if actual:
                    problems.append(f"{path.relative_to(models_dir)} is corrupted ({kind} {actual[:12]}... differs)")
                    forget_download(folder, item.path)
    return list(dict.fromkeys(problems))


def cmd_verify(args: argparse.Namespace) -> int:
    chosen = (
        entries(args.names) if args.names else [e for e in catalog.CATALOG if catalog.state(e, args.models_dir).present]
    )
    if not chosen:
        say(f"nothing pulled in {args.models_dir}")
        return EXIT_OK
    failed = []
    for entry in chosen:
        found = catalog.state(entry, args.models_dir)
        if not found.present:
            say(f"{entry.name}: absent from {found.directory}")
            failed.append(entry.name)
            continue
        problems = check(entry, args.models_dir)
        recorded = [p.name for p in entry.parts() if Record.read(p.directory(args.models_dir), p.name)]
        how = "sizes and hashes match the Hub's listing" if recorded else "layout only (no download record)"
        say(f"{entry.name}: " + ("ok, " + how if not problems else "; ".join(problems)))
        if problems:
            failed.append(entry.name)
    if failed:
        raise Failure(
            f"{', '.join(failed)} failed the check: `{PROG} pull {' '.join(failed)}` fetches what is missing or "
            "corrupted",
            EXIT_LOCAL,
        )
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    for entry in entries(args.names):
        found = catalog.state(entry, args.models_dir)
        folder = found.directory
        # A folder of its own goes even when only a partial download is in it; a shared one keeps the others' files.
        if not found.present and (entry.shared_folder or not folder.exists()):
            say(f"{entry.name}: nothing to remove in {folder}")
            continue
        if not entry.shared_folder:
            shutil.rmtree(folder)
            inside = [p.name for p in entry.parts()[1:]]
            say(f"{entry.name}: removed {folder}" + (f" (with {', '.join(inside)})" if inside else ""))
            continue
        record = Record.read(folder, entry.name)
        paths = {item.path for item in record.files} if record else set()
        paths |= {alt for required in entry.required() for alt in required.split("|")}
        for path in sorted(paths):
            (folder / path).unlink(missing_ok=True)
        # The shared folder's huggingface_hub state belongs to this entry alone (voices keep theirs elsewhere).
        shutil.rmtree(folder / catalog.HF_DOWNLOAD_DIR, ignore_errors=True)
        Record.path(folder, entry.name).unlink(missing_ok=True)
        say(f"{entry.name}: removed {', '.join(sorted(paths))} from {folder}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    default_dir = os.environ.get("VOICE_MODELS_DIR") or "models"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        type=lambda text: Path(text).expanduser().absolute(),
        default=Path(default_dir).expanduser().absolute(),
        help=f"the models directory (env VOICE_MODELS_DIR; default {default_dir})",
    )
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN, or the stored login)")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch, check and remove the model checkpoints the stack serves (catalog: voice_triton.catalog).",
        epilog="Exit status: 0 ok, 1 local problem, 2 usage, 3 unknown name, 4 licence not accepted, 5 Hub unreachable "
        "or offline, 7 no access, 8 other Hub error, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="every known model and what the folder holds")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_list)
    pull = commands.add_parser("pull", parents=[common, hub], help="download models at their pinned revision")
    pull.add_argument("names", nargs="+", metavar="NAME", help=", ".join(catalog.names()))
    pull.add_argument("--accept-license", action="store_true", help="accept a licence that asks for it (Spark-TTS)")
    pull.set_defaults(handler=cmd_pull)
    rvc = commands.add_parser("pull-rvc", parents=[common, hub], help="download a user RVC voice (.pth, .index)")
    rvc.add_argument("repo_id", metavar="REPO_ID", help="Hugging Face repository, OWNER/NAME")
    rvc.add_argument("--pth", required=True, help="the RVC WebUI checkpoint's path in the repository")
    rvc.add_argument("--index", default="", help="its faiss index's path in the repository")
    rvc.add_argument("--name", default="", help="the voice's name (default: the .pth file's stem)")
    rvc.add_argument("--revision", default="main", help="branch, tag or commit (default main; a commit pins it)")
    rvc.set_defaults(handler=cmd_pull_rvc)
    verify = commands.add_parser("verify", parents=[common], help="check layout, sizes and hashes")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every model present")
    verify.set_defaults(handler=cmd_verify)
    remove = commands.add_parser("rm", parents=[common], help="remove downloaded models")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(handler=cmd_rm)
    return parser


def _fail(message: str, code: int) -> int:
    prefix = "\r\033[K" if sys.stderr.isatty() else ""  # past an open progress bar
    sys.stderr.write(f"{prefix}{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return code


def _quiet_hub() -> None:
    """huggingface_hub's own warnings repeat what this command says in its own words (retries, free space)."""
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        return
    hub_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="huggingface_hub")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _quiet_hub()
        return int(handler(args))
    except Failure as error:
        return _fail(str(error), error.code)
    except KeyboardInterrupt:
        return _fail("interrupted; what was downloaded is kept: run the same command again to resume", EXIT_INTERRUPTED)
    except OSError as error:
        return _fail(
            f"{error.strerror or type(error).__name__}" + (f" ({error.filename})" if error.filename else ""), 1
        )
    except Exception as error:  # a bug, but the user still gets one line and a status, not a traceback
        return _fail(f"unexpected {type(error).__name__}: {error}", EXIT_LOCAL)


if __name__ == "__main__":
    sys.exit(main())

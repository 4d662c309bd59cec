"""Published weights: where each system's official checkpoint lives, and :func:`pull`, which
downloads it, converts it with the safe importer and installs ``NAME.safetensors``.

Downloads go through ``huggingface_hub`` (resume of a broken transfer, ``HF_ENDPOINT``,
``HF_HOME``, tokens for gated mirrors, ``HF_HUB_OFFLINE``); nothing here speaks HTTP itself.
The original file lands in ``<model dir>/originals/NAME/`` and is deleted after a successful
conversion unless ``keep_original``; what upsr keeps is the converted file, written atomically
(a failed download or conversion leaves nothing under the final name).

Integrity: the SHA-256 of the downloaded file is compared with the server's ETag when that is
a SHA-256 (Hub LFS files): a difference means the transfer was damaged, an error. Where the
table knows the published digest, a different one is a one-line warning naming both digests and
the revision (an upstream re-upload is possible); the importer's strict key/shape check is the
gate that decides whether the file is installed.

Browser-only sources (Google Drive, OneDrive) are never fetched or scraped: :func:`pull` raises
:class:`BrowserOnly`, whose lines give the page and the exact ``upsr models import`` command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from upsr.errors import CheckpointError, UsageError

log = logging.getLogger("upsr.models.hub")

HF_ENDPOINT_DEFAULT = "https://huggingface.co"
OFFLINE_ENV = ("UPSR_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class Source:
    """Where the published weights of one installable name come from.

    ``name``: the installed name (``NAME.safetensors``); ``system``: the registry name whose
    importer converts the file; ``repo``/``filename``: the Hugging Face repository and file
    (empty for browser-only sources); ``sha256``: the published file's known digest (empty if
    none is recorded); ``page``: where a person downloads it (browser-only); ``file_hint``: the
    file that page offers.
    """

    name: str
    system: str
    licence: str
    repo: str = ""
    filename: str = ""
    sha256: str = ""
    page: str = ""
    file_hint: str = ""

    @property
    def pullable(self) -> bool:
        return bool(self.repo)

    @property
    def where(self) -> str:
        return f"hf:{self.repo}/{self.filename}" if self.repo else self.page


# Facts: ../shared/reference/official-implementations.md (§1.5, §3.4, §4.5, Wave-U-Mamba README)
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("apollo", "apollo", "CC BY-SA 4.0", repo="JusperLee/Apollo",
           filename="pytorch_model.bin",
           sha256="99d9af7f1ff20e63c393035513a655392818d66b4d7fc23d658175c1f15e8d76"),
    Source("audiosr-basic", "audiosr", "MIT (code)", repo="haoheliu/audiosr_basic",
           filename="pytorch_model.bin"),
    Source("audiosr-speech", "audiosr", "MIT (code)", repo="haoheliu/audiosr_speech",
           filename="pytorch_model.bin"),
    Source("wave-u-mamba", "wave-u-mamba", "MIT (code)",
           page="https://drive.google.com/file/d/1ljUMQHWil5w8moupWkapqkUOcGNN4x3e/view",
           file_hint="the generator checkpoint (g_XXXXXXXX)"),
    Source("aeromamba", "aeromamba", "none stated",
           page="https://poliufrjbr-my.sharepoint.com/:f:/g/personal/abreu_engcb_poli_ufrj_br/"
                "EhqOtFGTmeZNr-WNv976Jw8BLfpgBYisodrRb2uTGvrFsg",
           file_hint="checkpoint.th"),
)}
# registry names whose weights are installed under another name
DEFAULT_SOURCE = {"audiosr": "audiosr-basic"}


class BrowserOnly(UsageError):
    """The weights are published only behind a web page; ``lines`` say what to do."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.lines = [
            f"{source.name}: the published weights are behind a web page upsr does not fetch; "
            f"download {source.file_hint} in a browser from",
            f"  {source.page}",
            "then convert and install it with",
            f"  {import_command(source)}",
        ]
        super().__init__(f"no weights installed for {source.name!r}: download "
                         f"{source.file_hint} from {source.page} and run "
                         f"'{import_command(source)}'")


def source(name: str) -> Source | None:
    """The source of an installable name (``apollo``, ``audiosr-basic``), or of a registry
    name installed under another (``audiosr`` -> ``audiosr-basic``); ``None`` if unknown."""
    from upsr.models import canonical

    key = canonical(name)
    return SOURCES.get(DEFAULT_SOURCE.get(key, key))


def install_dir() -> Path:
    """Where pulled weights go: ``$UPSR_MODEL_DIR``, else the user cache."""
    from upsr.models import model_dirs

    return model_dirs()[0]


def target(source: Source) -> Path:
    return install_dir() / f"{source.name}.safetensors"


def import_command(source: Source) -> str:
    return (f"upsr models import {source.system} DOWNLOADED_FILE "
            f"{_quote(target(source))}")


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def offline_reason(offline: bool = False) -> str | None:
    """Why downloads are forbidden (``--offline``, ``UPSR_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), or
    ``None`` when they are allowed."""
    if offline:
        return "--offline"
    for var in OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def offline_error(source: Source, reason: str) -> UsageError:
    return UsageError(
        f"{source.name} is not installed and downloads are off ({reason}): run "
        f"'upsr models pull {source.name}' on a machine with a network, then copy "
        f"{source.name}.safetensors from its model folder to {install_dir()}/ here (or set "
        f"UPSR_MODEL_DIR to the folder holding it)")


def check_system(source: Source) -> None:
    """The registry must have the system that converts this source's file."""
    from upsr import models

    if source.system not in models.names():
        raise UsageError(f"{source.name}: needs the {source.system!r} model, which this upsr "
                         f"does not have (known: {', '.join(models.names())}); nothing "
                         f"downloaded")


def ensure(source: Source, *, allow: bool = True) -> Path:
    """The installed file of ``source``, pulling it first (one notice on stderr) where allowed.

    ``allow=False`` (``--offline``) or an offline environment variable makes a missing file an
    error naming the command to run elsewhere and the file to copy here."""
    path = target(source)
    if path.is_file():
        return path
    if not source.pullable:
        raise BrowserOnly(source)
    check_system(source)
    reason = offline_reason(not allow)
    if reason is not None:
        raise offline_error(source, reason)
    log.warning("%s is not installed: downloading it from %s (once; see 'upsr models pull')",
                source.name, source.where)
    return pull(source.name).path


def pending_pull(name: str) -> Source | None:
    """The source ``load_model(name)`` would download now (not installed, pullable, its
    system present, downloads allowed), or ``None``; lets a dry run say so without fetching."""
    from upsr import models

    if models.looks_like_path(name) or models.find_checkpoint(name) is not None:
        return None
    src = source(name)
    if (src is None or not src.pullable or src.system not in models.names()
            or models.find_checkpoint(src.name) is not None or offline_reason() is not None):
        return None
    return src


@dataclass(frozen=True)
class Pulled:
    """What :func:`pull` did: the installed file, the revision (commit) it came from, the
    original's SHA-256, whether it was already up to date, and the warnings it printed."""

    path: Path
    revision: str
    sha256: str
    up_to_date: bool
    warnings: tuple[str, ...]
    describe: str


def _hub_error(source: Source, revision: str, exc: BaseException) -> CheckpointError:
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [name])[0]
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        what = f"repository {source.repo} not found or not accessible (a token may be needed)"
    elif name == "RevisionNotFoundError":
        what = f"revision {revision!r} not found in {source.repo}"
    elif name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        what = f"{source.filename} not found in {source.repo} at {revision!r}"
    else:
        what = f"{name}: {first}"
    endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT)
    return CheckpointError(f"{source.name}: download from {endpoint} failed ({what}); "
                           f"nothing installed")


def _progress_bars(on: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if on else disable_progress_bars)()


def pull(name: str, *, revision: str | None = None, keep_original: bool = False,
         offline: bool = False, force: bool = False) -> Pulled:
    """Download the published weights of ``name``, convert them and install
    ``NAME.safetensors`` with ``source`` metadata (repository, commit, SHA-256 of the original,
    licence, date).

    ``revision``: a branch, tag or commit (default ``main``); an installed file from the same
    commit and digest is left alone unless ``force``. Raises :class:`BrowserOnly` for sources
    that need a browser, :class:`UsageError` for an unknown name, a missing system or an
    offline environment, :class:`CheckpointError` for failed downloads and files the importer
    rejects (nothing is installed then).
    """
    from upsr import checkpoint, models

    src = source(name)
    if src is None:
        pullable = ", ".join(n for n, s in SOURCES.items() if s.pullable)
        raise UsageError(f"no published weights known for {name!r} (pullable: {pullable}; "
                         f"'upsr models list' shows every system)")
    if not src.pullable:
        raise BrowserOnly(src)
    check_system(src)
    reason = offline_reason(offline)
    if reason is not None:
        raise offline_error(src, reason)
    _check_writable(install_dir())
    rev = revision or "main"
    try:
        import huggingface_hub as hf
    except ImportError:  # pragma: no cover - a declared dependency
        raise UsageError("downloading needs the huggingface_hub package "
                         "(pip install huggingface_hub)") from None

    _progress_bars(sys.stderr.isatty())
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub import
    try:
        meta = hf.get_hf_file_metadata(hf.hf_hub_url(src.repo, src.filename, revision=rev,
                                                     endpoint=endpoint), endpoint=endpoint)
    except Exception as exc:  # network, HTTP and Hub errors all become one line
        raise _hub_error(src, rev, exc) from None
    commit = meta.commit_hash or rev
    etag = (meta.etag or "").strip('"').lower()
    dest = target(src)
    if dest.is_file() and not force:
        try:
            had = checkpoint.json_field(checkpoint.read_metadata(dest), "source")
        except CheckpointError:
            had = {}
        if had.get("repo") != src.repo:  # trained or imported by hand: never replace silently
            raise UsageError(f"{dest} exists and was not pulled from {src.repo}; move it away "
                             f"or pass --force to replace it")
        if had.get("revision") == commit and (not _is_sha256(etag) or had.get("sha256") == etag):
            return Pulled(dest, commit, str(had.get("sha256", "")), True, (),
                          f"{src.name}: up to date ({src.repo} at {commit[:12]})")
    from upsr.models.importers import import_checkpoint, sha256_file

    originals = install_dir() / "originals" / src.name
    local = originals / src.filename
    warnings: list[str] = []
    ok = False
    try:  # an error or Ctrl-C anywhere below leaves no original and no installed file
        try:
            local = Path(hf.hf_hub_download(src.repo, src.filename, revision=commit,
                                            local_dir=originals, endpoint=endpoint))
        except Exception as exc:
            raise _hub_error(src, rev, exc) from None
        digest = sha256_file(local)
        if _is_sha256(etag) and digest != etag:
            raise CheckpointError(f"{src.name}: the downloaded {src.filename} is damaged "
                                  f"(SHA-256 {digest}, the server's is {etag}); nothing "
                                  f"installed, run the pull again")
        if src.sha256 and digest != src.sha256:
            warnings.append(f"{src.name}: {src.repo}/{src.filename} at revision {commit} has "
                            f"SHA-256 {digest}, upsr knows {src.sha256} (re-uploaded "
                            f"upstream?); installing it only if the importer's key/shape "
                            f"check passes")
            log.warning("%s", warnings[-1])
        record = {"source": f"hf:{src.repo}/{src.filename}", "repo": src.repo,
                  "file": src.filename, "revision": commit, "requested": rev,
                  "sha256": digest, "licence": src.licence,
                  "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        models.spec(src.system)  # import the system module before converting
        imported = import_checkpoint(src.system, local, dest, source=record)
        ok = True
    finally:
        if not keep_original:
            shutil.rmtree(originals, ignore_errors=True)
            with contextlib.suppress(OSError):  # only if no other original is kept there
                originals.parent.rmdir()
        elif not ok:
            log.warning("%s: the downloaded original is kept in %s", src.name, local)
    return Pulled(imported.path, commit, digest, False, tuple(warnings), imported.describe())


def _check_writable(folder: Path) -> None:
    """Fail before any download when the model folder cannot be written."""
    from upsr.fsutil import atomic_write_text

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            atomic_write_text(folder / ".upsr-write-check", "")
            (folder / ".upsr-write-check").unlink()
    except OSError as exc:
        raise UsageError(f"model folder {folder} is not writable ({exc.strerror or exc}); set "
                         f"UPSR_MODEL_DIR to a folder you can write") from None


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def installed_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0

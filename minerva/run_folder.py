"""A run's folder: where its files go, what makes a folder one run's (its metrics, ``run.json``
and checkpoints), the lock that keeps two runs from writing one folder, and how files are
written there: never through a symbolic link (:func:`refuse_links`, :func:`write_file`,
:func:`open_to_append`), so a link planted in a run folder cannot make minerva write or
delete anything outside it."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from minerva.config import ALGORITHMS
from minerva.errors import OutDirError


def checkpoint_name(algo: str, which: str) -> str:
    """A run's checkpoint file: ``<algo>_last.pt`` or ``<algo>_best.pt`` (``which``)."""
    return f"{algo}_{which}.pt"


RUN_FILES = ("metrics.jsonl", "run.json",
             *(checkpoint_name(algo, which) for algo in ALGORITHMS for which in ("last", "best")),
             "videos/best.mp4")
LOCK_FILE = ".minerva.lock"
VIDEOS = "videos"
OVERWRITTEN_PREFIX = ".overwritten-"  # an overwritten run's files, until the new one's checkpoint


def folder_identity(out: Path) -> tuple[int, int]:
    """What tells ``out`` from a folder made at its path later (device and inode)."""
    status = os.stat(out)
    return status.st_dev, status.st_ino


def check_still_there(out: Path, identity: tuple[int, int]) -> None:
    """Raises FileNotFoundError (one line) when the run's folder was deleted, moved or
    replaced while the run was writing to it: the run stops instead of writing on into an
    unlinked file or a new folder.
    """
    try:
        present = folder_identity(out) == identity
    except OSError:
        present = False
    if not present:
        raise FileNotFoundError(errno.ENOENT, f"the run's folder {out} disappeared (deleted, "
                                              "moved or replaced) while the run was writing "
                                              "to it; training stopped")


def refuse_links(out: Path) -> None:
    """Refuses a symbolic link (dangling or not) where a run's file or folder belongs in
    ``out``: writing, replacing or deleting through it would reach outside the folder.

    Raises:
        OutDirError: ``out_dir: ...`` naming the link.
    """
    for path in (out / VIDEOS, *(out / name for name in RUN_FILES),
                 *out.glob("events.out.tfevents.*")):
        if path.is_symlink():
            raise OutDirError(f"{path} is a symbolic link where the run's own "
                              f"{'folder' if path.name == VIDEOS else 'file'} belongs; minerva "
                              "writes only its own files in a run folder: remove the link or "
                              "choose another --out-dir")


def open_to_append(path: Path):
    """``path`` in a run folder opened to append text (created if missing), refusing a
    symbolic link there (``O_NOFOLLOW``) instead of appending through it.

    Raises:
        OutDirError: ``out_dir: ...`` when ``path`` is a link.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                             0o644)
    except OSError:
        if path.is_symlink():
            refuse_links(path.parent)
        raise
    return open(descriptor, "a", encoding="utf-8")


def create_out_dir(out_dir: str | Path) -> Path:
    """Creates ``out_dir`` if needed and checks that it is a writable folder.

    Raises:
        OutDirError: ``out_dir: ...``, naming the folder and what is wrong with it.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutDirError(f"{out} is a file, not a folder") from None
    except NotADirectoryError:
        raise OutDirError(f"{out} is under a file, not a folder") from None
    except OSError as error:
        raise OutDirError(f"cannot create {out}: {error.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutDirError(f"{out} is not writable")
    return out


def prepare_out_dir(out_dir: str | Path, resumed_step: int | None = None,
                    overwrite: bool = False, algo: str = "vmpo",
                    keep: Path | None = None) -> tuple[Path, Path | None]:
    """:func:`create_out_dir`, and refuses a folder that holds another run; returns the
    folder and where an overwritten run's files wait (None: none).

    A fresh run (``resumed_step`` None) needs a folder without a run (of any algorithm); a
    resumed one of ``algo``, a folder without a run or holding this run at the resumed step
    (its ``<algo>_last.pt`` there): continuing another run's folder would drop or mix its
    events. With ``overwrite`` the other run's files (metrics, TensorBoard events,
    checkpoints) are moved aside into a hidden folder of their own, for the caller to delete
    once the new run's first checkpoint exists (a run killed before then leaves them
    there); ``keep`` (the checkpoint a run resumes from) stays where it is.

    Raises:
        OutDirError: ``out_dir: ...``, naming the folder and what it holds.
    """
    out = create_out_dir(out_dir)
    refuse_links(out)
    earlier = [out / name for name in RUN_FILES if (out / name).exists()]
    earlier += sorted(out.glob("events.out.tfevents.*"))
    last = [path for path in earlier if path.name.endswith("_last.pt")]
    if not earlier or (resumed_step is not None and _saved_step(out, algo) == resumed_step):
        return out, None
    if not overwrite:
        held = ", ".join(path.name for path in earlier[:3]) + (", ..." if earlier[3:] else "")
        if resumed_step is None:
            resume = (f"resume it with --resume {last[0]}, " if last
                      else "it has no checkpoint to resume from (it stopped before its first); ")
            raise OutDirError(f"{out} already holds a run ({held}); {resume}replace it with "
                              "--overwrite, or choose another --out-dir")
        raise OutDirError(
            f"{out} holds another run ({held}; its last checkpoint is not at this "
            f"checkpoint's step {resumed_step}): continuing there would drop or mix its "
            "events; choose another --out-dir, or replace that run with --overwrite")
    # (with what earlier overwrites killed before their first checkpoint left aside)
    earlier += sorted(out.glob(f"{OVERWRITTEN_PREFIX}*"))
    aside = Path(tempfile.mkdtemp(dir=out, prefix=OVERWRITTEN_PREFIX))
    keep = None if keep is None else keep.absolute()
    for path in earlier:
        if path.absolute() != keep:
            os.replace(path, aside / path.name)
    return out, aside


def _saved_step(out: Path, algo: str) -> int | None:
    from minerva import checkpoint  # here: checkpoints need torch, this module does not

    try:
        return checkpoint.load(out / checkpoint_name(algo, "last"))["global_step"]
    except (OSError, checkpoint.CheckpointError):
        return None


@contextmanager
def locked_out_dir(out: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``out`` for a run: two runs writing one folder would mix
    their metrics and remove each other's checkpoint files.

    Raises:
        OutDirError: ``out_dir: ...`` when another process holds it, or its lock file cannot
            be opened (a symbolic link, which would have the run write through it, or a
            folder).
    """
    path = out / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        why = "is a symbolic link" if path.is_symlink() else f"cannot be opened ({error.strerror})"
        raise OutDirError(f"{path}, the run's lock file, {why}; remove it") from None
    with open(descriptor, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise OutDirError(f"{out} is in use by another minerva run "
                             f"({holder})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

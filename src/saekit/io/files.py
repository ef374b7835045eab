"""Where results go: checked before the work, written atomically, never mixed.

Every verb that writes (train, cache, eval --json, convert, report, compare, push's
local side) goes through these few functions, so a user's outputs get the same
guarantees everywhere:

* ``check_writable_folder`` / ``check_writable_file`` run before any long work: a
  read-only folder or ``--out`` naming a file is one clear ``OutputError`` at the
  start, not a traceback after an hour of training.
* ``atomic_write_text`` / ``atomic_save_tensors`` write a temporary file and rename
  it; a failure (full disk, folder made read-only mid-run) removes the temporary file,
  leaves the previous version untouched, and says so.
* ``FolderLock`` holds an exclusive ``flock`` on a folder for the length of a run, so a
  second process writing into it is refused with the first one's process id. The
  kernel drops the lock when the holder dies (also on kill -9), so a stale lock file
  never blocks a later run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection

from ..errors import FolderBusyError, OutputError

LOCK_FILE = ".saekit.lock"


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the folder is read-only)"
    return e.strerror or str(e)


def check_writable_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure ``folder`` is, or can become, a folder we can write into; changes nothing.

    The nearest existing ancestor must be a writable folder (so ``mkdir -p`` will work);
    an existing path must be a folder, not a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder; choose a folder path")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{flag} {folder}: {probe} is a file, so no folder can be made under it; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" (its nearest existing folder, {probe}, is read-only)"
        raise OutputError(f"cannot write into {flag} {folder}{where}: permission denied; choose a writable folder")
    return folder


def check_output_folder(
    folder: str | os.PathLike, *, overwrite: bool, own_files: Collection[str], holds_result: Callable[[Path], bool],
    result: str, written: str, flag: str = "--out",
) -> Path:
    """Check, before any slow work, that a verb may write its files into ``folder``;
    changes nothing. It must be (or become) a writable folder; one that already holds
    the verb's ``result`` (``holds_result``) is rewritten; a non-empty folder holding
    anything but ``own_files`` (and leftover temporary files) is refused unless
    ``overwrite``, and even then only the verb's own files are replaced. ``result`` and
    ``written`` word the refusal: "holds no {result}", "to write {written} into it".
    """
    out = check_writable_folder(folder, flag)
    if not out.is_dir() or overwrite or holds_result(out):
        return out
    others = sorted(p.name for p in out.iterdir() if p.name not in own_files and not p.match(TEMP_GLOB))
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise OutputError(f"{flag} {out} is not empty and holds no {result} ({shown}); choose a new or empty folder, "
                          f"or pass --overwrite to write {written} into it (other files are kept)")
    return out


def check_writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure ``path`` can be written (replaced atomically); changes nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist; create it or choose another {flag}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {path.parent} is read-only; choose another {flag}")
    return path


TEMP_GLOB = ".*.tmp"  # what atomic writes leave behind if the process dies mid-write


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before the rename (hidden, beside it, matching TEMP_GLOB)."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write_with(path: Path, write_tmp: Callable[[Path], None]) -> None:
    """Call ``write_tmp(tmp)`` to write a temporary file, then rename it onto ``path``.

    Whatever stops the write (a full disk, Ctrl-C) removes the temporary file, which can
    be as large as a checkpoint; the previous ``path`` is untouched until the rename.
    """
    tmp = temp_path(path)
    try:
        write_tmp(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        kept = "the previous version is kept" if path.exists() else "nothing was written there"
        raise OutputError(f"cannot write {path}: {_reason(e)}; {kept}") from None


def output_error(path: Path, e: OSError, kept: str) -> OutputError:
    """The one message for a failed write that is not atomic (appending to a log)."""
    return OutputError(f"cannot write {path}: {_reason(e)}; {kept}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write_with(Path(path), write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically, with the permissions the umask gives."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as e:  # safetensors reports I/O errors as its own type
            raise OSError(errno.ENOSPC if "No space" in str(e) else errno.EIO, str(e)) from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # safetensors creates the file private (0600); give it the permissions any other
        # file the user writes would get, so a shared run folder stays readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    atomic_write_with(Path(path), write)


def make_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    folder = check_writable_folder(folder, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {flag} {folder}: {_reason(e)}") from None
    return folder


def remove_if_empty(folder: Path) -> None:
    """Remove a folder a command created if it holds nothing but a lock file: a command
    that failed before writing anything leaves no empty folder behind."""
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK_FILE}:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


class FolderLock:
    """An exclusive lock on a folder for one process's run (``with FolderLock(out, "train"):``).

    The lock file records who holds it (pid, host, command, start time) so the
    refusal can name the other run. ``fcntl.flock`` is released by the kernel when the
    process ends however it ends; on systems without ``fcntl`` the lock is advisory
    only (the file is written, nothing is refused).
    """

    def __init__(self, folder: str | os.PathLike, verb: str):
        self.folder, self.verb = Path(folder), verb
        self.path = self.folder / LOCK_FILE
        self._fh: Any = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            fcntl = None
        try:
            fh = open(self.path, "a+")
        except OSError as e:
            raise OutputError(f"cannot write into {self.folder}: {_reason(e)}; choose a writable folder") from None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = _describe_holder(fh.read())
                fh.close()
                raise FolderBusyError(
                    f"{self.folder} is in use by another saekit process ({holder}); wait for it to finish, "
                    "stop it, or choose another folder"
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb,
            "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }) + "\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        # The file stays: deleting it would let a third process lock a new inode while a
        # second one waits on the old. An empty unlocked file means "free".
        try:
            self._fh.seek(0)
            self._fh.truncate()
        except OSError:
            pass
        self._fh.close()
        self._fh = None


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"saekit {info['verb']}, pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "process unknown"

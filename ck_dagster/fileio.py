"""Generic file helpers: atomic writes (files on disk are never half-written), content hashes,
a lock-guarded cache, and the tail of a log."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.settings import Settings


class UnreadableFile(CkError):
    """A file that is not read: not a regular file, too large, or failing to read. The message
    says why, without the path (callers name the file and field)."""


def regular_file_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not an existing regular file, in words, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return _os_reason(exc)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`UnreadableFile` for
    anything else. A pipe, a device or ``/proc/self/mem`` is refused, never read without end."""
    reason = regular_file_reason(path)
    if reason:
        raise UnreadableFile(reason)
    try:
        # O_NONBLOCK: a FIFO put in the file's place since the check cannot block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UnreadableFile("is not a regular file")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableFile(f"cannot be read: {_os_reason(exc)}") from None
    if len(data) > limit:
        raise UnreadableFile(f"is larger than {limit // 1_000_000} MB, the most that is read")
    return data


def file_in_the_way(folder: Path) -> Path | None:
    """The file (or unreadable path) standing where ``folder`` or one of its parents would
    have to be made, or None when the folder exists or can be made."""
    for candidate in [folder, *folder.parents]:
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return candidate
    return None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a loop of symbolic links"
    if exc.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    if exc.errno == errno.ENOTDIR:
        return "not found: a part of its path is a file, not a folder"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` through a temp file and a rename.

    Returns False (and leaves the file and its mtime alone) when the file already holds exactly
    ``data``, so re-materializing an unchanged run keeps its files byte-identical.
    """
    target = Path(path)
    try:
        if target.read_bytes() == data:
            return False
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> bool:
    """Write UTF-8 text atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where ck_dagster keeps what it can rebuild (``$CK_DAGSTER_CACHE``, else
    ``~/.cache/ck_dagster``)."""
    return Settings.from_env().cache_dir


def cached(path: Path, make: Callable[[Path], object]) -> Path:
    """``path``, built by ``make`` unless a process before built it. A file lock keeps
    concurrent processes from building it twice; ``make`` must write atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            make(path)
    return path


def tail(path: str | os.PathLike[str] | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist yet).

    Reads backwards in blocks, so a multi-gigabyte training log costs the same as a small one.
    """
    if path is None or lines <= 0:
        return ""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])

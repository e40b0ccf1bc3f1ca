"""One writer per output_dir: an advisory lock held by the run's main process.

output_dir/.bitk-train.lock is locked with ``flock`` (POSIX) or ``msvcrt.locking`` (Windows) for
the whole run and holds the owner's process id, for the message a second run gets. The operating
system drops the lock when the process ends, however it ends (kill -9 included), so a lock left
behind never blocks the next run: only the file stays, and the next run takes it over. The file
is never deleted (deleting a locked file would let a third run lock a fresh file while the
second still holds the old one). Where neither call exists the run goes on unlocked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "OutputDirLock"]

LOCK_FILE = ".bitk-train.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None


class OutputDirLock:
    """``OutputDirLock.acquire(out)`` creates ``out`` if needed and locks it; ``release()`` unlocks.

    Raises OSError with one readable line: EBUSY when another live process holds the folder,
    the folder's own error (not a folder, permission denied, disk full) when it cannot be used.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, output_dir: str | Path) -> OutputDirLock:
        out = Path(output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            path = out / LOCK_FILE
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise unusable_output_dir(out, e) from e
        try:
            if not _lock(fd):
                owner = _read_pid(fd)
                raise OSError(
                    errno.EBUSY,
                    f"output_dir {out} is in use by process {owner or '(unknown)'}: another run writes there; "
                    "wait for it to finish, stop it, or choose another output_dir",
                )
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _unlock(fd)
        finally:
            os.close(fd)


def unusable_output_dir(out: Path, e: OSError) -> OSError:
    """The OSError of a folder the run cannot write to, as one line naming it."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) or (out.exists() and not out.is_dir()):
        why = "it is a file, not a folder (or a file is in the way of its path)"
    else:
        why = (e.strerror or str(e)).lower()
    return OSError(e.errno, f"cannot use output_dir {out}: {why}")


def _lock(fd: int) -> bool:
    """Take the lock without waiting: False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None

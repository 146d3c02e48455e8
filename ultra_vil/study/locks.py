"""Run locks shared by the processes of one study: flock-held, taken over atomically when their holder is gone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ultra_vil.errors import UserError


LOCK_MARK = "flock"  # the third word of a lock file whose holder keeps an flock on it ("PID HOST flock")


@dataclass
class RunLock:
    """The lock of one run, held: its open lock file, with an exclusive flock (fcntl.flock) on it.

    The kernel drops an flock when the last descriptor of the open file closes, so the lock is held exactly as
    long as its holder, or a job process that inherited the descriptor (run_worker passes it on), lives: no pid
    has to be asked whether it is still alive, and a killed holder frees its runs by dying.
    """

    path: Path
    fd: int

    def name(self, pid: int) -> None:
        """Record `pid` as the holder: the process that writes the run, named in other processes' messages."""
        import socket

        text = f"{pid} {socket.gethostname()} {LOCK_MARK}\n".encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, text)  # over the old text, then cut: a reader never sees the file empty
        os.ftruncate(self.fd, len(text))

    def release(self) -> None:
        """Delete the lock file, then close it. In that order: a process that opened the file before it was
        deleted gets the flock only once it is closed, and then finds the path gone (claim checks it) and starts
        again on a new file, rather than holding a lock that nobody else can see."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.path, self.fd):
                self.path.unlink()
        except PermissionError:  # Windows deletes no open file (and has no flock to keep): close first
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (not deleted, nor replaced by a new one)."""
    try:
        st, ours = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)


def _read_lock(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip()


def _holder(text: str) -> str:
    """'pid N on HOST' from a lock file's text; an empty file is a holder that has not written it yet."""
    words = text.split()
    return f"pid {words[0]} on {words[1]}" if len(words) >= 2 else "a process that is starting (empty lock file)"


def _older_holder(text: str, host: str) -> str:
    """The holder a lock file names that the flock cannot vouch for: '' when there is none.

    Called with the flock held, so a holder of this version (LOCK_MARK) is gone, and so is one that left an empty
    file (killed between creating and writing it). An older version wrote "PID HOST" and held no flock: its pid
    decides, as it did then. Another host's lock is always respected: its pid means nothing here, and not every
    network file system passes an flock between hosts (delete it by hand if that machine died)."""
    words = text.split()
    if len(words) < 2:
        return ""
    pid, where = words[0], words[1]
    if where != host:
        return f"pid {pid} on {where}"
    if len(words) >= 3 and words[2] == LOCK_MARK:
        return ""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return ""
    except PermissionError:  # alive, another user's
        pass
    return f"pid {pid} on {where}"


def claim(lock: Path) -> tuple[RunLock | None, str]:
    """Take the lock file of one run for this process: (the held lock, "") when taken, else (None, who holds it:
    "pid N on HOST").

    The lock is an flock on the file (see RunLock), taken without waiting, and the file's text only says who holds
    it. That makes a take-over atomic: of the processes that find a stale lock, the kernel gives the flock to one,
    and the others are refused. (Reading the holder's pid, asking whether it lives, deleting the file and creating
    a new one are four steps another process can come between: it deleted a lock that had just been taken, and
    two processes trained one run into one folder.) A lock is free when nobody holds its flock, whatever pid its
    file names (a pid can be reused), except that a lock written by an older version of compare.py (no flock) is
    respected while its pid lives, and a lock from another host always (_older_holder).

    Without fcntl (Windows) the lock file is created exclusively and never taken over: delete a stale one by hand.
    """
    import socket

    host = socket.gethostname()
    try:
        import fcntl
    except ImportError:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None, f"{_holder(lock.read_text(errors='replace'))}; if that process died, delete {lock}"
        held = RunLock(lock, fd)
        held.name(os.getpid())
        return held, ""
    for _ in range(20):
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            text = _read_lock(fd)
            os.close(fd)
            return None, _holder(text)
        except OSError as e:
            os.close(fd)

            raise UserError(f"cannot lock the run's lock file: {e.strerror or e} (the file system of --out-dir "
                            "does not support flock?)", lock) from None  # fmt: skip
        if not _same_file(lock, fd):  # its holder deleted it after we opened it: try again on the new file
            os.close(fd)
            continue
        older = _older_holder(_read_lock(fd), host)
        if older:
            os.close(fd)
            return None, older
        held = RunLock(lock, fd)
        held.name(os.getpid())
        return held, ""
    return None, f"a lock at {lock} that keeps changing"

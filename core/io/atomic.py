"""Atomic file writes: a killed process never leaves a half-written file under the final name. What is written
gets the umask's modes (mkstemp and mkdtemp alone would leave it private: 0600 / 0700), and a temporary
folder is named by its writer, so that one a killed process left behind can be told and removed."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

# A live writer adds a file every few milliseconds; an hour without one is a folder nobody is writing
# (the fallback for a pid now reused, a folder of another host or one named before writers were recorded).
STALE_AFTER_S = 3600
_WRITER = re.compile(r"\.(\d+)@([^@/]+)\.[^.]+$")   # .<name>.<pid>@<host>.<random>, see temp_dir


def _umask() -> int:
    """The process umask, read where it can be without changing it: os.umask only reads by setting, which
    for an instant applies to every thread's files; /proc/self/status has it on Linux >= 4.7."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)   # elsewhere (macOS): set and put back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The leading dot and ".partial" keep the temp file out of every listing that looks for results.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer: some (safetensors) replace the file, with mkstemp's private 0600 or their own mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def temp_dir(parent: str | Path, name: str) -> Path:
    """A new hidden folder in `parent` to build `name` in before renaming it there, named by this process."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}@{socket.gethostname()}.", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it 0700 whatever the umask
    return tmp


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        pass
    return True


def _stale(folder: Path) -> bool:
    writer = _WRITER.search(folder.name)
    if writer and writer[2] == socket.gethostname() and not _running(int(writer[1])):
        return True
    try:
        newest = max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
    except FileNotFoundError:   # its writer has just renamed it into place
        return False
    return time.time() - newest > STALE_AFTER_S


def remove_stale_temp_dirs(parent: str | Path) -> list[Path]:
    """Remove the hidden folders in `parent` that no live process is writing: made on this host by a process
    that has ended, or unchanged for STALE_AFTER_S. Every hidden folder in `parent` must be a temp_dir."""
    stale = [p for p in Path(parent).glob(".*") if p.is_dir() and _stale(p)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale

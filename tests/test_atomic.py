"""Temporary files and folders: written with the umask's modes, and those of killed writers removed."""
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from core import presets
from core.io.atomic import STALE_AFTER_S, atomic_write
from core.io.weights import save_weights

SET = "n4_s256_seed0_d0.2-0.8_k1"   # the phantom set phantom_root(4, 0, stack_size=1) caches


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _ended_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_phantom_generation_removes_the_temp_folders_of_killed_generators_only(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PHANTOM_CACHE", tmp_path)
    here, ended = socket.gethostname(), _ended_pid()
    killed = tmp_path / f".{SET}.{ended}@{here}.0123abcd"                 # its generator has ended
    live = tmp_path / f".{SET}.{os.getpid()}@{here}.4567cdef"             # this process is still writing it
    elsewhere = tmp_path / f".{SET}.{ended}@another-host.89abcdef"        # a pid of another machine: unknown
    unnamed = tmp_path / f".{SET}.abc_1234"                               # mkdtemp's name, before writers were
    for folder in (killed, live, elsewhere, unnamed):
        (folder / "normal").mkdir(parents=True)
    long_ago = time.time() - STALE_AFTER_S - 60
    for path in (unnamed / "normal", unnamed):
        os.utime(path, (long_ago, long_ago))
    root = presets.phantom_root(4, seed=0, stack_size=1)
    assert root.name == SET and (root / "labels.csv").is_file()
    assert sorted(p.name for p in tmp_path.glob(".*")) == sorted([live.name, elsewhere.name])


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_and_folders_are_written_with_the_umasks_modes(umask, file_mode, dir_mode, tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PHANTOM_CACHE", tmp_path / "cache")
    before = os.umask(umask)
    try:
        atomic_write(tmp_path / "card.json", "{}")
        save_weights(tmp_path / "model.safetensors", {"w": torch.zeros(2)})
        root = presets.phantom_root(4, seed=0, stack_size=1)
    finally:
        os.umask(before)
    assert _mode(tmp_path / "card.json") == _mode(tmp_path / "model.safetensors") == file_mode
    assert _mode(root) == _mode(root / "normal") == dir_mode
    assert _mode(root / "labels.csv") == _mode(next((root / "normal").glob("*.png"))) == file_mode

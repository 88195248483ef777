"""Exact resume (issue 18): a run killed with SIGKILL in the middle of an epoch and resumed ends with the
history and the weights of the same run left alone, with augmentation, dropout and a fresh epoch_size draw
each epoch all in play."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
MODEL = "resnet18"   # the suite's tiny CNN: at 32 px its validation AUC moves (MobileNetV2's stays at 0.5)
EPOCHS = 4
TIMING = ["seconds", "img_per_s", "data_wait_s", "compute_s", "wall_s"]   # the clock's, not the run's


def _train(phantoms: Path, out: Path, *extra: str) -> subprocess.Popen:
    # fp32 pinned: auto numerics would be chosen by timing, which two runs need not agree on.
    args = ["train.py", "--data", str(phantoms), "--models", MODEL, "--epochs", str(EPOCHS), "--image-size", "32",
            "--batch-size", "8", "--epoch-size", "24", "--augment", "--numerics", "fp32", "--device", "cpu",
            "--out", str(out), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_mid_epoch(proc: subprocess.Popen, model_dir: Path) -> int:
    """SIGKILL half an epoch after a resume state appears: the next epoch is under way. Its saved epoch."""
    deadline = time.time() + 120
    while not (model_dir / "last.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    saved = json.loads((model_dir / "last.json").read_text())
    time.sleep(saved["history"][0]["seconds"] / 2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads((model_dir / "last.json").read_text())["epoch"]


def test_a_run_killed_mid_epoch_and_resumed_equals_the_run_left_alone(tiny_phantoms, tmp_path):
    # Both at once: one core each (OMP_NUM_THREADS=1), the same numerics either way.
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    alone, victim = _train(tiny_phantoms, whole), _train(tiny_phantoms, killed)
    done = _kill_mid_epoch(victim, killed / MODEL)
    assert 1 <= done < EPOCHS and not (killed / MODEL / "card.json").exists()
    resumed = _train(tiny_phantoms, killed, "--resume")
    for proc in (alone, resumed):
        log = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, log
    assert f"resuming after epoch {done}" in log

    histories = [pd.read_csv(run / MODEL / "history.csv").drop(columns=TIMING, errors="ignore")
                 for run in (whole, killed)]
    assert histories[0]["epoch"].tolist() == list(range(1, EPOCHS + 1))
    pd.testing.assert_frame_equal(histories[0], histories[1], check_exact=True)
    # The saved weights are the best epoch's: they tell the runs apart only if that epoch came after the kill.
    assert histories[0]["val_auc"].idxmax() + 1 > done, histories[0]
    weights = [load_file(run / MODEL / "model.safetensors") for run in (whole, killed)]
    assert weights[0].keys() == weights[1].keys()
    differ = [k for k in weights[0] if not weights[0][k].equal(weights[1][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"

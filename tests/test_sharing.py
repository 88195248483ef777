"""core.nets.sharing: CAMs of different models run side by side, CAMs and predictions of one model in turn,
and concurrent callers never hold more intra-op threads than there are cores."""
import threading

import numpy as np
import torch

from core.explain.cam import explain_image
from core.nets import sharing
from core.nets.build import LoadedModel, create_model
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD

CARD = {"model": "resnet18", "input_size": 64, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def explaining(loaded: LoadedModel, image: np.ndarray) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    thread = threading.Thread(target=lambda: (explain_image(loaded, image), done.set()), daemon=True)
    thread.start()
    return thread, done


def test_two_models_are_explained_concurrently_and_one_model_in_turn():
    torch.manual_seed(0)
    a, b = (LoadedModel(create_model("resnet18").eval(), CARD) for _ in range(2))
    image = np.random.default_rng(0).integers(0, 256, (80, 120), dtype=np.uint8)
    explain_image(a, image)   # warm-up: oneDNN kernel choice, so the waits below are about locks only
    with sharing.model_lock(a.model):   # as if another session were mid-CAM on model a
        thread_a, done_a = explaining(a, image)
        thread_b, done_b = explaining(b, image)
        assert done_b.wait(120), "model b's CAM waited for model a's lock"
        assert not done_a.is_set(), "a second CAM of model a ran while its lock was held"
    assert done_a.wait(120), "model a's CAM ran once its lock was free"
    thread_a.join()
    thread_b.join()
    assert not a.model.layer4._forward_hooks and all(p.requires_grad for p in a.model.parameters())


def test_concurrent_shares_hold_at_most_the_cores_and_restore_the_thread_count(monkeypatch):
    monkeypatch.setattr(sharing, "_free_cores", 2)
    monkeypatch.setattr(sharing, "_CORES", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    held, peak, inside = [0], [0], threading.Barrier(3, timeout=30)
    guard = threading.Lock()

    def worker():
        with sharing.cpu_share() as taken:
            assert torch.get_num_threads() == taken >= 1
            with guard:
                held[0] += taken
                peak[0] = max(peak[0], held[0])
            try:
                inside.wait(timeout=0.5)   # hold the cores a moment so the shares overlap
            except threading.BrokenBarrierError:
                pass
            with guard:
                held[0] -= taken

    with sharing.cpu_share() as alone:   # the main thread alone: every configured thread
        assert alone == 2
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2 and sharing._free_cores == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(before)

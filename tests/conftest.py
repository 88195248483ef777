import os
import tempfile
from pathlib import Path

# timm retries the hub for ~46 s when there is no network; tests never download weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Numerics timings are cached per machine (core.nets.numerics); the suite keeps its own cache.
os.environ.setdefault("HEMOLENS_CACHE", tempfile.mkdtemp(prefix="hemolens-cache-"))

import pytest

TINY_RUN_MODELS = ["resnet18", "mobilenet_v2", "cnn_gru", "knn", "ensemble_soft"]
TINY_RUN_CAM_MODELS = ["resnet18", "mobilenet_v2", "cnn_gru"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real head CT sets in ../shared/data; tests that need them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real CT test data is not part of the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory) -> Path:
    """80 phantom slices at 64 px in stacks of 2 (40 independent groups), shared by the suite."""
    from core.phantom.generate import write_dataset
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, n=80, size=64, seed=3, stack_size=2)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_phantoms, tmp_path_factory) -> Path:
    """A run with one model of each family (2 epochs at 32 px) in <tmp>/checkpoints/tiny, trained once:
    TINY_RUN_MODELS, of which TINY_RUN_CAM_MODELS have Grad-CAMs."""
    import train
    out = tmp_path_factory.mktemp("runs") / "checkpoints" / "tiny"
    assert train.main(["--data", str(tiny_phantoms), "--models", ",".join(TINY_RUN_MODELS), "--epochs", "2",
                       "--image-size", "32", "--batch-size", "16", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def subtypes_run(tiny_phantoms, tmp_path_factory) -> Path:
    """A run of `train.py --subtypes` (1 epoch at 32 px) on the tiny phantoms, whose bleeds carry their subtype:
    a CNN and a sequence model with six outputs each, in <tmp>/checkpoints/subtypes."""
    import train
    out = tmp_path_factory.mktemp("runs") / "checkpoints" / "subtypes"
    assert train.main(["--data", str(tiny_phantoms), "--models", "resnet18,cnn_gru", "--epochs", "1",
                       "--image-size", "32", "--batch-size", "16", "--subtypes", "--out", str(out)]) == 0
    return out

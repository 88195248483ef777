import os
from pathlib import Path

# timm retries the hub for ~46 s when there is no network; tests never download weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real head CT sets in ../shared/data; tests that need them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real CT test data is not part of the repository)")
    return SHARED_DATA

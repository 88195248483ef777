"""Uploads: a dataset .zip extracted safely (core.io.archive) and evaluated from the Data page, and a slice uploaded
with its bleed (a mask image or a box) on the Scan page."""
import io
import shutil
import stat
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import core.explain.cam
import dashboard.models
from conftest import TINY_RUN_CAM_MODELS, TINY_RUN_MODELS
from core.data.layouts import box_mask
from core.io import store as ckpt
from core.io.archive import ArchiveError, extract_dataset
from core.io.framing import frame, framing_of
from core.io.imaging import load_scan
from core.phantom.generate import generate_slice, render, write_dataset
from test_dashboard import ok, page, peak_captions, png_bytes

REPO = Path(__file__).resolve().parents[1]


def zip_bytes(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def zip_folder(folder: Path, top: bool) -> bytes:
    """A dataset folder zipped as a file manager does: under its own name (`top`), or its contents alone; macOS's
    resource forks beside it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    prefix = f"{folder.name}/" if top else ""
    return zip_bytes([(prefix + p.relative_to(folder).as_posix(), p.read_bytes()) for p in files]
                     + [(f"__MACOSX/{prefix}._{files[0].name}", b"\x00\x05\x16\x07")])


def symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16   # how `zip --symlinks` stores a link
    return info, target.encode()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Each: the members (given the test's folder), the limits lowered for it, what its one sentence says.
REFUSED = {
    "dot-dot": (lambda tmp: [("site/a.png", b"ok"), ("../../../escaped.txt", b"out")], {},
                "'../../../escaped.txt' climbs out of its folder with '..'."),
    "absolute": (lambda tmp: [("site/a.png", b"ok"), (str(tmp / "absolute.txt"), b"out")], {},
                 "has an absolute path."),
    "symlink": (lambda tmp: [("site/a.png", b"ok"), symlink("site/link", str(tmp))], {},
                "'site/link' is a symbolic link."),
    "bomb over the cap": (lambda tmp: [("site/zeros.bin", bytes(10 << 20))], {"max_bytes": 1 << 20},
                          "unpacks to 10 MB, more than 1 MB."),
    "bomb by its ratio": (lambda tmp: [("site/zeros.bin", bytes(10 << 20))], {},
                          "more than 100 times (a decompression bomb)."),
    "too many members": (lambda tmp: [(f"site/{i}.png", b"ok") for i in range(11)], {"max_members": 10},
                         "the archive holds 11 members, more than 10."),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_dangerous_archive_is_refused_in_one_sentence_and_leaves_nothing(tmp_path, case):
    members, limits, says = REFUSED[case]
    data = zip_bytes(members(tmp_path))
    assert len(data) < 100_000, "a small upload"
    parent = tmp_path / "uploads"
    parent.mkdir()
    before = listing(tmp_path)
    with pytest.raises(ArchiveError) as refused:
        extract_dataset(io.BytesIO(data), parent, "upload", **limits)
    sentence = str(refused.value)
    assert sentence.startswith("Refused: the archive") and sentence.endswith(says) and ". " not in sentence
    assert listing(tmp_path) == before == ["uploads"], "nothing written, the fresh folder removed"


def test_a_member_unpacking_beyond_its_declared_size_is_cut_off(tmp_path, monkeypatch):
    """zipfile stops at the declared size itself; the copy counts again, so a reader that did not is still cut off
    (here, one that returns 5 MB for a member declaring 1,000 bytes)."""
    data = zip_bytes([("site/a.png", bytes(1000))])
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(bytes(5 << 20)))
    parent = tmp_path / "uploads"
    parent.mkdir()
    with pytest.raises(ArchiveError, match=r"^Refused: the archive's member 'site/a.png' unpacks to more than the "
                                           r"1,000 bytes it declares\.$"):
        extract_dataset(io.BytesIO(data), parent, "upload")
    assert listing(tmp_path) == ["uploads"]


def test_a_file_that_is_not_a_zip_is_one_sentence(tmp_path):
    with pytest.raises(ArchiveError, match=r"^The file is not a readable \.zip archive\.$"):
        extract_dataset(io.BytesIO(b"PK not really" * 100), tmp_path, "upload")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("top, name", [(True, "site_c"), (False, "upload")])
def test_a_zipped_dataset_extracts_under_its_top_folder_else_the_given_name(tmp_path, top, name):
    write_dataset(tmp_path / "site_c", n=6, size=32, seed=5, stack_size=1)
    parent = tmp_path / "uploads"
    parent.mkdir()
    folder = extract_dataset(io.BytesIO(zip_folder(tmp_path / "site_c", top)), parent, "upload")
    assert folder.name == name and folder.parent.parent == parent
    assert listing(folder) == listing(tmp_path / "site_c")
    assert all((folder / f).read_bytes() == (tmp_path / "site_c" / f).read_bytes()
               for f in listing(folder) if (folder / f).is_file())
    assert listing(folder.parent) == [name, *(f"{name}/{f}" for f in listing(folder))], "no __MACOSX"


@pytest.fixture
def run_copy(tiny_run, tmp_path, monkeypatch):
    """A copy of the suite's tiny run (the shared one is never written), exposed through CHECKPOINTS_DIR."""
    copy = Path(shutil.copytree(tiny_run, tmp_path / "checkpoints" / tiny_run.name))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(copy.parent))
    return copy


def test_the_data_page_evaluates_an_uploaded_zip_and_lists_it_as_a_dataset(run_copy, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))   # where the page extracts (and logs)
    write_dataset(tmp_path / "site_c", n=20, size=64, seed=13, stack_size=1)
    at = ok(page("data"))
    uploader = at.file_uploader(key="eval_zip")
    server_cap = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert 0 < uploader.proto.max_upload_size_mb <= server_cap, "the server refuses what its cap does not allow"

    uploader.upload("evil.zip", zip_bytes([("site/a.png", b"ok"), ("../escaped.txt", b"out")]), "application/zip")
    at.button(key="eval_zip_start").click().run()
    assert [e.value for e in ok(at).error] == ["Refused: the archive's member '../escaped.txt' climbs out of its "
                                               "folder with '..'."]
    assert "evaluation" not in at.session_state and listing(temp) == []

    at.file_uploader(key="eval_zip").clear().upload("upload.zip", zip_folder(tmp_path / "site_c", top=True),
                                                    "application/zip")
    at.button(key="eval_zip_start").click().run()
    job = at.session_state["evaluation"]
    data = Path(job["proc"].args[-1])
    assert data.name == "site_c" and data.parent.parent == temp and job["folder"] == "upload.zip"
    assert job["proc"].wait(timeout=600) == 0, open(job["log"]).read()
    for _ in range(100):   # removed by a thread once the process ends
        if not data.parent.exists():
            break
        time.sleep(0.1)
    assert not data.parent.exists(), "the extracted folder goes when its evaluation ends"
    ok(at.run())
    assert any(f"Stored the evaluation in {run_copy / ckpt.EVALUATIONS / 'site_c'}." in s.value for s in at.success)
    assert at.sidebar.selectbox(key="dataset").options[1] == "External: site_c (20 cases)"


@pytest.fixture
def run_dir(tiny_run, monkeypatch):
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tiny_run.parent))
    return tiny_run


def record_masks(monkeypatch) -> list[np.ndarray | None]:
    """Every mask the Scan page outlines: on the slice (models.outline(image, mask)) and on each map
    (core.explain.cam.overlay(..., mask=mask))."""
    seen = []
    outline, overlay = dashboard.models.outline, core.explain.cam.overlay
    monkeypatch.setattr(dashboard.models, "outline", lambda image, mask: seen.append(mask) or outline(image, mask))
    monkeypatch.setattr(core.explain.cam, "overlay", lambda *a, mask=None, **k: seen.append(mask) or overlay(
        *a, mask=mask, **k))
    return seen


def test_an_uploaded_slice_with_its_bleed_is_outlined_and_every_map_says_whether_its_peak_hit_it(run_dir, monkeypatch):
    """A 256 px slice decoded at 128 px (the display cap lowered): its mask, given as an image or a box in the slice's
    own pixels, is resized nearest-neighbour to the decoded slice and framed with it, on the slice and every map."""
    monkeypatch.setattr(dashboard.models, "DISPLAY_MAX_SIDE", 128)
    phantom = generate_slice(np.random.default_rng(4), 256, "intraparenchymal", 0.1)
    slice_png, framing = png_bytes(render(phantom.hu)), framing_of(ckpt.run_facts(run_dir))
    decoded = load_scan(slice_png, max_side=128).image

    def expected(mask_256: np.ndarray) -> np.ndarray:
        half = np.asarray(Image.fromarray(mask_256).resize((128, 128), Image.NEAREST)) > 0
        return frame(decoded, framing, half)[1]

    seen = record_masks(monkeypatch)
    at = ok(page("scan"))
    at.file_uploader(key="scan_upload").upload("slice.png", slice_png, "image/png").run()
    assert not peak_captions(ok(at)) and "green" not in at.image[0].captions[0]   # no mask: nothing extra
    seen.clear()
    at.file_uploader(key="scan_mask").upload("mask.png", png_bytes(phantom.mask.astype(np.uint8) * 255)).run()
    assert "green: true bleed outline" in ok(at).image[0].captions[0]
    assert len(peak_captions(at)) == len(TINY_RUN_CAM_MODELS) == len(at.image) - 1   # one under every map
    want = expected(phantom.mask.astype(np.uint8))
    assert want.any() and len(seen) == 1 + len(TINY_RUN_CAM_MODELS)
    assert all(np.array_equal(m, want) for m in seen), "the same framed mask on the slice and every map"

    rows, cols = np.nonzero(phantom.mask)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    at.file_uploader(key="scan_mask").clear().run()
    seen.clear()
    at.text_input(key="scan_box").input(", ".join(map(str, box))).run()
    boxed = box_mask(pd.DataFrame({"x": [box[0]], "y": [box[1]], "width": [box[2] - box[0]],
                                   "height": [box[3] - box[1]]}), (256, 256))
    assert len(peak_captions(ok(at))) == len(TINY_RUN_CAM_MODELS) and len(seen) == 1 + len(TINY_RUN_CAM_MODELS)
    assert all(np.array_equal(m, expected(boxed.astype(np.uint8))) for m in seen)


BOX_SENTENCE = ("The bleed box is left out: type four numbers x0,y0,x1,y1 with 0 ≤ x0 < x1 ≤ 96 and 0 ≤ y0 < y1 ≤ 96, "
                "the slice's pixels.")


def warned_and_going_on(at, says: str) -> bool:
    """The one sentence is a warning, every model still scores the slice, and nothing is outlined."""
    return (says in [w.value for w in ok(at).warning] and len(at.metric) == len(TINY_RUN_MODELS)
            and not peak_captions(at) and "green" not in at.image[0].captions[0])


def test_a_bleed_that_cannot_be_used_is_one_warning_and_the_page_goes_on(run_dir):
    phantom = generate_slice(np.random.default_rng(1), 96, "subdural", 0.2)
    at = ok(page("scan"))
    at.file_uploader(key="scan_upload").upload("slice.png", png_bytes(render(phantom.hu)), "image/png").run()
    at.file_uploader(key="scan_mask").upload("mask.png", png_bytes(np.full((40, 40), 255, np.uint8))).run()
    assert warned_and_going_on(at, "The bleed mask is left out: it is 40 × 40 px and the slice 96 × 96 px.")
    at.file_uploader(key="scan_mask").clear().upload("mask.png", b"\x00not an image" * 20).run()
    assert warned_and_going_on(at, "The bleed mask is left out: the file is not a recognised image (PNG, JPEG, TIFF, "
                                   "BMP or DICOM).")
    at.file_uploader(key="scan_mask").clear().run()
    for box in ("10, 20", "10, 10, 200, 20"):   # not four numbers; beyond the slice
        at.text_input(key="scan_box").input(box).run()
        assert warned_and_going_on(at, BOX_SENTENCE)

"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never `playwright install`).

Starts `streamlit run dashboard/app.py` on 127.0.0.1, uploads a scan on the Scan page, waits for every
model's probability and CAM, then shows the test split's largest intraparenchymal bleed and saves screenshots
(to $E2E_SCREENSHOTS, default a temp folder), and stops
the server by its PID. A second test opens the Leaderboard while a real trainer runs in the background and
waits for a model that was not on it at first to appear by itself. Skipped where /usr/bin/chromium is absent
(.ci/run installs it).
"""
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from core.families import family_of_card
from core.io import store as ckpt
from core.io.framing import framing_of
from core.io.imaging import MASK_COLOUR, display_grey, windows_of
from core.io.progress import PROGRESS, trainer_alive
from core.phantom.generate import generate_slice, render, write_dataset
from core.registry import get_spec
from core.teach import build_deck
from dashboard.models import case_image
from conftest import SHARED_DATA

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int) -> str:
    """The URL of the streamlit server `proc` once it answers its health check."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return url
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "streamlit did not start"
            time.sleep(0.3)


@contextlib.contextmanager
def streamlit_on(checkpoints: Path):
    """(URL, first run folder) of a dashboard serving `checkpoints`, stopped by its PID afterwards."""
    port = _free_port()
    env = {**os.environ, "CHECKPOINTS_DIR": str(checkpoints), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield wait_healthy(proc, port), next(iter(ckpt.list_runs(checkpoints)))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.fixture
def server(tiny_run):
    with streamlit_on(Path(os.environ.get("E2E_CHECKPOINTS", tiny_run.parent))) as served:
        yield served


def chromium(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])


def test_a_stored_evaluation_is_a_dataset_with_its_generalization_gap(tiny_run, tmp_path):
    """core.evaluate without --out stores an external evaluation in the run; in the browser the sidebar offers
    it, and the Leaderboard then scores it and sets each model's internal AUC beside the external one."""
    from playwright.sync_api import expect, sync_playwright
    from core.evaluate import main as evaluate_main
    run = Path(shutil.copytree(tiny_run, tmp_path / "checkpoints" / tiny_run.name))
    write_dataset(tmp_path / "site_b", 20, size=64, seed=99, stack_size=1)
    assert evaluate_main(["--run", str(run), "--data", str(tmp_path / "site_b"), "--bootstrap", "0"]) == 0
    with streamlit_on(tmp_path / "checkpoints") as (url, _), sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.goto(url)
        expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Internal vs external")).to_be_visible(timeout=60_000)
        page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]").filter(has_text="Dataset").click()
        page.get_by_role("option", name="External: site_b (20 cases)").click()
        expect(page.get_by_text("external set").first).to_be_visible(timeout=60_000)
        # st.dataframe draws on a canvas; its column headers live on in the DOM for assistive technology.
        expect(page.locator("[role=columnheader]", has_text="site_b: gap").first).to_be_attached(timeout=60_000)
        expect(page.locator("[role=columnheader]", has_text="Internal AUC").first).to_be_attached()
        browser.close()


def test_upload_a_scan_and_see_every_probability_and_cam(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, run = server
    models = ckpt.list_models(run)
    cam_models = [m for m in models if ckpt.load_card(run / m).get("family", "cnn") in ("cnn", "sequence")]
    shots = Path(os.environ.get("E2E_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    # The easiest bleed of the demo's range (difficulty 0: large and dense), of the subtype its 64 px CAMs find best.
    phantom = generate_slice(np.random.default_rng(5), 256, "intraparenchymal", 0.0)
    scan = tmp_path / "intraparenchymal.png"
    Image.fromarray(render(phantom.hu)).save(scan)
    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url)
        expect(page.get_by_text("not for clinical use").first).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)   # let every chart finish drawing
        page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)

        page.get_by_role("link", name="Scan").click()
        page.locator("input[type=file]").first.set_input_files(str(scan))
        consensus = page.get_by_text(f"of {len(models)} models call hemorrhage")
        expect(consensus).to_be_visible(timeout=120_000)
        metrics = page.locator("[data-testid=stMetric]")
        expect(metrics).to_have_count(len(models), timeout=60_000)
        for i in range(len(models)):
            assert "%" in metrics.nth(i).inner_text()
        # One scan image plus one CAM overlay per convolutional model.
        images = page.locator("[data-testid=stImage] img")
        expect(images).to_have_count(1 + len(cam_models), timeout=120_000)
        garbage = tmp_path / "garbage.png"
        garbage.write_bytes(b"this is not an image")
        page.locator("input[type=file]").first.set_input_files(str(garbage))
        expect(page.locator("[data-testid=stAlertContentError]").first).to_be_visible(timeout=60_000)
        unlike = page.get_by_text("This scan is unlike the training data")
        if SHARED_DATA.is_dir():   # a real normal slice from another hospital, to models trained on phantoms
            page.locator("input[type=file]").first.set_input_files(str(next(SHARED_DATA.glob("rsna_ich_dev/normal/*.png"))))
            expect(unlike).to_be_visible(timeout=120_000)
        # The README's picture: a test-split hemorrhage, its true outline beside each model's map.
        case = largest_test_bleed(run)
        page.get_by_text("Example from the test split").click()
        page.locator("[data-testid=stSelectbox]").filter(has_text="Test case").click()
        page.keyboard.type(case)
        page.keyboard.press("Enter")
        expect(page.get_by_text(f"{case}, truth: hemorrhage")).to_be_visible(timeout=60_000)
        expect(images).to_have_count(1 + len(cam_models), timeout=120_000)
        expect(unlike).to_have_count(0)   # a phantom of the run's own test split is like its training data
        page.set_viewport_size({"width": 1500, "height": 2600})   # the app scrolls inside: show the CAM grid too
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "scan.png"), full_page=True)
        browser.close()
    assert (shots / "leaderboard.png").stat().st_size > 10_000 and (shots / "scan.png").stat().st_size > 10_000


TELLING = ("hemorrhage", "intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")


def first_masked_bleed(run: Path) -> tuple[int, str, np.ndarray, np.ndarray]:
    """(place in the Teach page's deck, id, grey slice and bleed mask as shown) of the deck's first bleed with a mask:
    the deck's order follows from its cases and seed alone (core.teach.build_deck), never from the page."""
    models = ckpt.list_models(run)
    rows = pd.concat([pd.read_csv(run / m / ckpt.PREDICTIONS, dtype={"id": str}).assign(model=m) for m in models])
    deck = build_deck(rows[rows["split"] == "test"], dict.fromkeys(models, 0.5))
    settings = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    for pos, case in enumerate(deck.cases.index):
        if deck.cases.at[case, "label"] == 1:
            image, mask, _ = case_image(deck.cases.at[case, "path"], framing_of(settings), windows_of(settings))
            if mask is not None:
                return pos, case, display_grey(image), mask
    pytest.skip("no test-split bleed of this run has a mask")


def shown_image(page) -> np.ndarray | None:
    """The slice the page's first Plotly chart draws, decoded from its data URI; None while the chart has no image
    yet (Plotly adds the element before its source)."""
    source = page.locator(".js-plotly-plot image").first.get_attribute("href")
    if not source or "," not in source:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


def showing(page, grey: np.ndarray) -> bool:
    """Whether the page's first chart draws exactly this grey slice."""
    shown = shown_image(page)
    return shown is not None and shown.shape[:2] == grey.shape and bool((shown == grey[..., None]).all())


def outlined(page) -> bool:
    """Whether the page's first chart draws a bleed outline."""
    shown = shown_image(page)
    return shown is not None and bool((shown == MASK_COLOUR).all(axis=2).any())


def wait_for(page, condition, failure: str, timeout_s: float = 60) -> None:
    """Polls condition() until it holds (a rerun may leave the last chart up a moment); fails with `failure`."""
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, failure
        page.wait_for_timeout(200)


def test_a_quiz_round_on_the_teach_page(server, tmp_path):
    """Nothing tells the case before the reveal; a click inside the bleed is scored on it; the reveal shows the
    outline and every network's map; the session summary counts the answer. Next and Reveal by keyboard."""
    from playwright.sync_api import expect, sync_playwright
    url, run = server
    cam_models = [m for m in ckpt.list_models(run) if family_of_card(ckpt.load_card(run / m)).explained_by_cam]
    shots = Path(os.environ.get("E2E_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    pos, case, grey, mask = first_masked_bleed(run)
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)   # deepest in the bleed
    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        page.get_by_role("link", name="Teach").click()
        expect(page.get_by_text("Case 1 of ")).to_be_visible(timeout=60_000)
        expect(page.locator(".st-key-teach_next button")).to_be_visible(timeout=60_000)
        page.get_by_role("heading", name="Teach").click()   # the page, not the sidebar's link, takes the keys
        for i in range(pos):
            page.keyboard.press("n")
            expect(page.get_by_text(f"Case {i + 2} of ")).to_be_visible(timeout=60_000)
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        expect(plot).to_be_visible(timeout=60_000)
        # The chart shows this case's slice, bare: grey, no outline (the last case's chart may linger a moment).
        wait_for(page, lambda: showing(page, grey), "the quiz does not show the case's bare slice")
        html = page.content().lower()
        assert not [w for w in (*TELLING, case.lower(), Path(case).name.lower()) if w in html]
        box = plot.bounding_box()
        at = (box["x"] + (x + 0.5) / mask.shape[1] * box["width"], box["y"] + (y + 0.5) / mask.shape[0] * box["height"])
        page.mouse.move(*at)
        page.wait_for_timeout(500)   # Plotly finds the nearest click target on hover
        page.mouse.click(*at)
        expect(page.get_by_text("Your point is set")).to_be_visible(timeout=60_000)
        page.keyboard.press("1")   # bleed
        reveal = page.locator(".st-key-teach_reveal button:visible")   # a shortcut's button has a hidden twin
        expect(reveal).to_be_enabled(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "teach_quiz.png"), full_page=True)
        page.keyboard.press("v")
        expect(page.get_by_text("✓ on the bleed")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Truth: hemorrhage")).to_be_visible()
        expect(page.get_by_text(case)).to_be_visible()
        expect(page.locator("[data-testid=stImage] img")).to_have_count(len(cam_models), timeout=180_000)
        expect(page.get_by_text(re.compile("peak o(n|ff) the bleed"))).to_have_count(len(cam_models), timeout=60_000)
        wait_for(page, lambda: outlined(page), "the reveal does not outline the bleed")
        expect(page.get_by_text("1 case answered")).to_be_visible()
        expect(page.locator("[role=columnheader]", has_text="sensitivity").first).to_be_attached(timeout=60_000)
        page.set_viewport_size({"width": 1500, "height": 2700})   # the app scrolls inside: show maps and summary
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "teach_reveal.png"), full_page=True)
        browser.close()
    assert (shots / "teach_quiz.png").stat().st_size > 10_000 and (shots / "teach_reveal.png").stat().st_size > 10_000


def largest_test_bleed(run: Path) -> str:
    """The id of the run's largest intraparenchymal test bleed (any subtype's where none is), where a map on the
    bleed and a map on the skull are told apart at a glance."""
    split = pd.read_csv(run / "split.csv")
    bleeds = split[(split["split"] == "test") & (split["label"] == 1)]
    parenchymal = bleeds[bleeds["subtype"] == "intraparenchymal"]
    return str((parenchymal if len(parenchymal) else bleeds).sort_values("bleed_area_mm2")["id"].iloc[-1])


# knn lands in seconds, then each network in some 10 s (fp32: no numerics timing); the ResNet-50 at the end
# keeps the trainer busy after the model the test waits for, which lands while the browser looks.
LIVE_MODELS = ["knn", "resnet18", "mobilenet_v2", "mobilenet_v3_large", "resnet50"]


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the trainer ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


@pytest.fixture
def live_run(tmp_path):
    """(url, run folder, trainer): a trainer writing tmp/checkpoints/live and streamlit serving tmp/checkpoints."""
    write_dataset(tmp_path / "phantoms", n=400, size=64, seed=3)
    run = tmp_path / "checkpoints" / "live"
    env = {**os.environ, "CHECKPOINTS_DIR": str(run.parent), "HF_HUB_OFFLINE": "1"}
    trainer = subprocess.Popen([sys.executable, "train.py", "--data", str(tmp_path / "phantoms"), "--models",
                                ",".join(LIVE_MODELS), "--epochs", "4", "--image-size", "32", "--numerics", "fp32",
                                "--out", str(run)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port",
                               str(port), "--server.address", "127.0.0.1", "--server.headless", "true"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = wait_healthy(server, port)
        _wait_for(lambda: ckpt.list_models(run), "first model", trainer)
        yield url, run, trainer
    finally:
        os.killpg(trainer.pid, signal.SIGKILL)
        server.send_signal(signal.SIGTERM)
        trainer.wait(timeout=20)
        server.wait(timeout=20)


def test_a_model_landing_during_training_appears_on_the_open_leaderboard(live_run):
    from playwright.sync_api import expect, sync_playwright

    url, run, trainer = live_run
    started = time.time()
    names = {m: get_spec(m).display_name for m in LIVE_MODELS}
    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url)
        expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Training in progress").first).to_be_visible(timeout=30_000)
        charts = page.locator(".js-plotly-plot")
        expect(charts.first).to_be_visible(timeout=60_000)
        shown = [m for m in LIVE_MODELS if charts.get_by_text(names[m], exact=True).count()]
        missing = [m for m in LIVE_MODELS[:-1] if m not in shown]
        assert shown and missing, f"the trainer outran the browser: {shown} already on the first Leaderboard"
        expect(charts.get_by_text(names[missing[0]], exact=True).first).to_be_visible(timeout=180_000)
        state = json.loads((run / PROGRESS).read_text())
        assert state["status"] == "running" and trainer_alive(run) and trainer.poll() is None
        assert missing[0] in state["done"]
        browser.close()
    print(f"new model seen {time.time() - started:.0f} s after the page opened")

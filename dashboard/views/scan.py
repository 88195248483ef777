"""Scan: one slice (upload, test-split example or fresh phantom) through every model that loads, with CAM overlays;
the others are rows saying why they are unavailable. An uploaded slice may come with its bleed (a mask image or a
box), outlined and pointed at like a dataset's."""
import re
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.layouts import box_mask
from core.data.stacks import slice_order
from core.families import family_of_card
from core.families.base import Predictor
from core.inference import domain_scores_all, image_domain_scores, score_series, series_ranking, slice_images
from core.io import store
from core.io.framing import head_region
from core.io.imaging import WINDOW_SETS, WINDOWS, Scan, ScanError, display_grey
from core.metrics.binary import one_class_call
from core.metrics.domain import beyond_validation, input_problem, out_of_domain
from core.metrics.labels import PRESETS
from core.phantom.generate import generate_slice, render
from core.subtypes import SUBTYPES
from dashboard.frame import Run, preset, require_run, threshold
from dashboard.loaders import consensus, test_metrics, test_probs, truth as truth_of
from dashboard.models import (blank_probabilities, cam_for, case_image, explain_api, framed, image_domain_of,
                              load_models, outline, peak_note, read_scan, run_framing, run_windows, upload_side)

SATURATED = 1e-3   # a probability this close to the blank image's: the model's output ignores the input
SOURCES = {"upload": "Upload a file", "series": "Upload a series", "test": "Example from the test split",
           "phantom": "Fresh phantom"}
CALL_COLUMNS = ["model", "Model", "cam", "probability", "threshold", "hemorrhage", "slices", "subtypes", "saturated"]


@dataclass
class Shown:
    """The slice the page scores and draws, with what the caption says of it."""
    image: np.ndarray                        # (H, W[, C]) uint8
    facts: str
    mask: np.ndarray | None = None           # its known bleed
    series: list[np.ndarray] | None = None   # an uploaded series in slice order, image = series[centre]
    centre: int = 0
    names: list[str] | None = None           # the series' slices, in the same order
    no_hu: bool = False                      # decoded without Hounsfield units
    framed: bool = False                     # already framed as the run's models saw their slices


def score(run: Run, shown: Shown) -> tuple[pd.DataFrame, float, dict[str, str], dict[str, Predictor]]:
    """Every loaded model's call on the shown slice (core.inference.score_series; a sequence model reads the series
    around it), the seconds the models took, the models that did not load, with why, and those that did."""
    with st.spinner("Loading models…"):   # shown only while the background loading (dashboard/preload.py) runs
        loaded, failed = load_models(run)   # cached: not part of the timing
    start = time.perf_counter()
    outputs = score_series(loaded, shown.series or [shown.image])
    seconds = time.perf_counter() - start
    return calls_table(run, loaded, outputs, shown), seconds, failed, loaded


def calls_table(run: Run, loaded: dict[str, Predictor], outputs: dict[str, np.ndarray], shown: Shown) -> pd.DataFrame:
    """One row per model: its probability for the shown slice, decision at its threshold, every slice's probability,
    (a subtypes head's) subtype probabilities, and whether it is saturated: it gives a blank image of the same shape
    (once per run state) the same probability, deaf to what the slice shows. Its domain check comes later
    (`with_domain_checks`)."""
    blank = blank_probabilities(*run.key, shown.image.shape[2:], loaded)
    rows = []
    for model, out in outputs.items():
        thr, p = threshold(run.cards[model]), float(out[shown.centre, 0])
        rows.append({"model": model, "Model": run.display(model), "cam": family_of_card(run.cards[model]).explained_by_cam,
                     "probability": p, "threshold": thr, "hemorrhage": p >= thr, "slices": out[:, 0],
                     "subtypes": dict(zip(loaded[model].outputs[1:], out[shown.centre, 1:].tolist())),
                     "saturated": abs(p - blank[model]) < SATURATED})
    # What the test split says of each decision rule (cached per threshold).
    one_class = [one_class_call(test_metrics(*run.key, r["model"], r["threshold"])) for r in rows]
    return pd.DataFrame(rows, columns=CALL_COLUMNS).assign(one_class=one_class)


def with_domain_checks(calls: pd.DataFrame, loaded: dict[str, Predictor], image: np.ndarray) -> pd.DataFrame:
    """The calls with each model's own domain check of the slice (core.metrics.domain): `unusual`, and `beyond`
    which share of its validation slices; NaN for a model without one."""
    domain = domain_scores_all(loaded, slice_images([image]))
    unusual = {m: bool(loaded[m].domain.unusual(scores)[0]) for m, scores in domain.items()}
    beyond = {m: float(loaded[m].domain.percentile(scores)[0]) for m, scores in domain.items()}
    return calls.assign(unusual=calls["model"].map(unusual), beyond=calls["model"].map(beyond))


def series_table(calls: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per model, the series' scan score and call at its threshold, and its three most suspicious slices
    (core.inference.series_ranking), named "file (slice k): probability"."""
    ranking = series_ranking(dict(zip(calls["model"], calls["slices"])))
    rows = []
    for _, r in calls.iterrows():
        scan_score, top = ranking.at[r["model"], "scan_score"], ranking.at[r["model"], "top"]
        rows.append({"Model": r["Model"], "Scan score (max)": scan_score,
                     "Scan call": "hemorrhage" if scan_score >= r["threshold"] else "normal",
                     **{f"#{k + 1}": f"{names[i]} (slice {i + 1}): {r['slices'][i]:.1%}" for k, i in enumerate(top)}})
    return pd.DataFrame(rows)


def run_beyond(run: Run, image: np.ndarray) -> float | None:
    """Where the run's image domain check (core.inference.image_domain) puts the framed slice among its validation
    slices (1.0: beyond all of them); None for a run that stores none."""
    check = image_domain_of(*run.key)
    if check is None:
        return None
    return float(check[0].percentile(image_domain_scores(check, slice_images([image])))[0])


def domain_banner(run: Run, calls: pd.DataFrame, problem: str, run_place: float | None) -> None:
    """Whether the scan is like what the models were trained on (core.metrics.domain): a banner when it is not."""
    checked = calls[calls["unusual"].notna()]
    trained_on = store.training_data_text(store.run_facts(run.path))
    outside = int(checked["unusual"].astype(bool).sum())
    if problem:
        st.warning(f"**This does not look like a head CT slice** ({problem}). Every model below was trained on "
                   f"{trained_on}: their probabilities mean nothing for it.")
    elif run_place is None and checked.empty:
        st.info("This run stores no statistics of its training data (it predates the domain check), so nothing "
                "here says whether this scan is like what the models saw. Retraining the run adds the check.")
    elif out_of_domain(run_place, checked["beyond"].tolist()):
        image_part = ("its intensities and texture are outside what the run's training slices show, and "
                      if beyond_validation(run_place) else "")
        st.warning(f"**This scan is unlike the training data** ({trained_on}): {image_part}{outside} of "
                   f"{len(checked)} models find it outside what they learned. Read their probabilities as such: here a "
                   "high score is not evidence of a bleed, nor a low one of its absence.")
    else:
        st.caption(f"Trained on {trained_on}. This scan's intensities and texture are like the run's training "
                   "slices" + (f"; {outside} of {len(checked)} models find it unusual for what they learned (⚠ below)."
                               if outside else f", and each of the {len(checked)} models that check it finds it like "
                               "what it learned."))


def domain_note(row: pd.Series) -> str:
    """A tile's own checks: saturation, and where the scan falls among the model's validation slices."""
    saturated = ("⚠ saturated: the same probability as it gives a blank image, so it says nothing of this scan. "
                 if row["saturated"] else "")
    if row["unusual"] is None or pd.isna(row["unusual"]):
        return saturated + "No domain check of its own."
    where = f"more unusual than {row['beyond']:.0%} of its validation slices"
    return saturated + (f"⚠ Outside its training data: {where}." if row["unusual"] else
                        f"Like its training data ({where}).")


def nearest_resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to `shape` by nearest neighbour: a bleed mask keeps hard edges at the size its slice
    was decoded to."""
    resized = Image.fromarray(mask.astype(np.uint8)).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def mask_from_file(data: bytes, stored_shape: tuple[int, int]) -> np.ndarray:
    """An uploaded bleed mask image (nonzero = bleed) as booleans at its full size, which must be the slice's as
    stored; raises ScanError with one sentence."""
    try:
        found = read_scan(data, max_side=None)
    except ScanError as err:
        raise ScanError(f"The bleed mask is left out: {str(err)[:1].lower()}{str(err)[1:]}") from err
    if found.stored_shape != stored_shape:
        (h, w), (rows, cols) = found.stored_shape, stored_shape
        raise ScanError(f"The bleed mask is left out: it is {w} × {h} px and the slice {cols} × {rows} px.")
    return found.pixels > 0


def mask_from_box(text: str, stored_shape: tuple[int, int]) -> np.ndarray:
    """A bleed box typed as x0,y0,x1,y1 in the stored slice's pixels, as a mask of that size (every pixel it
    touches, as core.data.layouts.box_mask draws BHX boxes); raises ScanError with one sentence."""
    rows, cols = stored_shape
    try:
        x0, y0, x1, y1 = (float(n) for n in re.split(r"[\s,;]+", text.strip()))
        inside = 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows   # NaN and inf fall outside
    except ValueError:   # not four numbers
        inside = False
    if not inside:
        raise ScanError(f"The bleed box is left out: type four numbers x0,y0,x1,y1 with 0 ≤ x0 < x1 ≤ {cols} and "
                        f"0 ≤ y0 < y1 ≤ {rows}, the slice's pixels.")
    return box_mask(pd.DataFrame({"x": [x0], "y": [y0], "width": [x1 - x0], "height": [y1 - y0]}), stored_shape)


def upload_truth(scan: Scan) -> np.ndarray | None:
    """The bleed given with an uploaded slice, if any (a mask image of the slice's size, else a typed box), at the
    size the slice was decoded to; a mask that cannot be used is one warning and None, and so is an empty one."""
    left, right = st.columns(2)
    upload = left.file_uploader("Bleed mask (optional)", type=["png", "jpg", "jpeg"], key="scan_mask",
                                help="A PNG or JPEG of the slice's size, nonzero where the bleed is: outlined on the "
                                     "slice and every map, and each map says whether its peak hit it.")
    box = right.text_input("…or a bleed box (optional)", key="scan_box", placeholder="x0,y0,x1,y1",
                           help="Corners in the slice's own pixels; used when no mask image is given.")
    try:
        if upload is not None:
            mask = mask_from_file(upload.getvalue(), scan.stored_shape)
        elif box.strip():
            mask = mask_from_box(box, scan.stored_shape)
        else:
            return None
    except ScanError as err:
        st.warning(str(err))
        return None
    mask = nearest_resized(mask, scan.image.shape[:2])
    return mask if mask.any() else None


def upload_facts(scan: Scan) -> str:
    """The caption of an uploaded slice: modality, stored and shown size, pixel spacing, window, frame."""
    image = scan.image
    spacing = f", {scan.pixel_spacing[0]:.2f} × {scan.pixel_spacing[1]:.2f} mm pixels" if scan.pixel_spacing else ""
    shrunk = f", shown and scored at {image.shape[1]} × {image.shape[0]}" if scan.stored_shape != image.shape[:2] else ""
    return f"{scan.modality}, {scan.stored_shape[1]} × {scan.stored_shape[0]} px{shrunk}{spacing}" + (
        f", {scan.window} window" if scan.window in WINDOWS else "") + (
        f", frame {st.session_state.get('scan_frame', 0) + 1} of {scan.n_frames}" if scan.n_frames > 1 else "")


def from_upload(run: Run, windows: str) -> Shown:
    # No `type=` filter: DICOM files often have no extension and arrive as application/octet-stream;
    # load_scan decides from the content.
    upload = st.file_uploader("PNG, JPEG, TIFF, BMP or DICOM (one axial slice)", key="scan_upload")
    if upload is None:
        st.info("Upload a slice, or pick an example above. Patient tags in DICOM files are never shown or kept.")
        st.stop()
    try:
        scan = read_scan(upload.getvalue(), st.session_state.get("scan_window") if windows == "brain" else windows,
                         st.session_state.get("scan_frame", 0), upload_side(run))
    except ScanError as err:
        st.error(str(err))
        st.stop()
    if scan.is_hu and windows == "brain":
        st.selectbox("CT window", list(WINDOWS), key="scan_window", format_func=lambda w: (
            f"{w.replace('_', ' ')} (centre {WINDOWS[w][0]:.0f}, width {WINDOWS[w][1]:.0f} HU)"))
    if scan.n_frames > 1:
        st.number_input("Frame", 0, scan.n_frames - 1, key="scan_frame")
    mask = upload_truth(scan)
    if scan.modality not in ("CT", "raster"):
        st.warning(f"This is a {scan.modality} image, not CT: the models were trained on head CT slices in the "
                   "brain window, so their outputs below mean nothing for it.")
    return Shown(scan.image, upload_facts(scan), mask, no_hu=not scan.is_hu)


def from_series(run: Run, windows: str) -> Shown:
    uploads = st.file_uploader("Several slices of one series (DICOM, or images numbered in slice order)",
                               accept_multiple_files=True, key="scan_series")
    if len(uploads or []) < 2:
        st.info("Upload two or more adjacent slices: the sequence models (CNN + GRU/LSTM) read the slices "
                "around the one you pick; every other model reads that slice alone.")
        st.stop()
    try:
        scans = [read_scan(u.getvalue(), windows, max_side=upload_side(run)) for u in uploads]
    except ScanError as err:
        st.error(str(err))
        st.stop()
    if len({sc.image.shape for sc in scans}) > 1:
        st.error("The slices differ in size; upload slices of one series.")
        st.stop()
    order = slice_order(scans, [u.name for u in uploads])
    series = [scans[i].image for i in order]
    names = [uploads[i].name + (f" #{scans[i].instance_number}" if scans[i].instance_number is not None else "")
             for i in order]
    centre = st.slider("Slice", 1, len(series), (len(series) + 1) // 2, key="series_slice") - 1
    return Shown(series[centre], f"slice {centre + 1} of {len(series)} (ordered by position, instance number, file "
                 "name)", series=series, centre=centre, names=names, no_hu=not all(sc.is_hu for sc in scans))


def from_test(run: Run, windows: str) -> Shown:
    cases = test_probs(*run.key, run.models)
    truth = truth_of(cases)
    case = st.selectbox("Test case", cases.index, key="scan_case", format_func=lambda i: f"{i} ({truth[i]})")
    image, mask, problem = case_image(cases.at[case, "path"], run_framing(run), windows)
    if image is None:
        st.error(problem)
        st.stop()
    return Shown(image, f"{case}, truth: {truth[case]}", mask, framed=True)


def from_phantom(run: Run, windows: str) -> Shown:
    c1, c2, c3 = st.columns(3)
    subtype = c1.selectbox("Subtype", ["", *SUBTYPES], format_func=lambda s: s or "normal (no bleed)", key="ph_subtype")
    difficulty = c2.slider("Difficulty", 0.0, 1.0, 0.3, 0.05, key="ph_difficulty",
                           help="Higher: smaller bleeds, closer to brain density.")
    seed = c3.number_input("Seed", 0, 10_000, 0, key="ph_seed")
    phantom = generate_slice(np.random.default_rng(int(seed)), 256, subtype or None, difficulty)
    return Shown(render(phantom.hu, windows), f"phantom: {subtype or 'normal'}, bleed {phantom.bleed_area_mm2:.0f} mm²",
                 phantom.mask if phantom.mask.any() else None)   # a normal: no outline


READERS = {"upload": from_upload, "series": from_series, "test": from_test, "phantom": from_phantom}


def as_trained(run: Run, shown: Shown, windows: str) -> Shown:
    """The slice (and its series) framed as the run's models saw theirs, and the caption saying how they read it;
    a warning where the image cannot give the windows they read."""
    framing = run_framing(run)
    if not shown.framed and framing != "none":
        shown.image, shown.mask = framed(shown.image, shown.mask, framing)
        shown.series = [framed(s, None, framing)[0] for s in shown.series] if shown.series else shown.series
        shown.facts += ", framed to the head as the models were trained"
    if windows != "brain":
        shown.facts += f", shown in the brain window of the {', '.join(WINDOW_SETS[windows])} windows the models read"
    if shown.no_hu and windows != "brain":
        st.warning("This image holds no Hounsfield units, so it cannot be seen through the models' three CT windows: "
                   "each channel is given its grey instead, unlike anything they were trained on. Read their outputs "
                   "with care; a DICOM or NIfTI slice gives the real windows.")
    return shown


def show_calls(run: Run, shown: Shown, calls: pd.DataFrame, seconds: float, failed: dict[str, str]) -> dict:
    """The slice beside every model's probability and call, subtype probabilities, and the models left out; returns
    each tile's slot for its domain note, filled once the checks are made."""
    left, right = st.columns([1, 2])
    left.image(outline(shown.image, shown.mask), width="stretch",
               caption=shown.facts + (" (green: true bleed outline)" if shown.mask is not None else ""))
    right.subheader(f"{consensus(calls['hemorrhage'])}")
    right.caption(f"Each model at its {PRESETS[preset()]} threshold; {seconds * 1000:.0f} ms for "
                  f"{len(calls)} models on this machine.")
    notes = call_tiles(right, calls)
    subtyped = calls[calls["subtypes"].map(bool)]
    if len(subtyped):
        right.markdown("**Subtype probabilities** of the models with a subtypes head (`train.py --subtypes`): one "
                       "sigmoid each, so several can be high at once and they need not add up to the hemorrhage "
                       "probability.")
        right.dataframe(pd.DataFrame(subtyped["subtypes"].tolist(), index=subtyped["Model"]), width="stretch",
                        column_config={c: st.column_config.NumberColumn(format="percent")
                                       for c in subtyped["subtypes"].iloc[0]})
    for model, why in {**run.unavailable, **failed}.items():
        right.warning(f"**{run.display(model)}**: unavailable: {why}")
    return notes


def call_tiles(container, calls: pd.DataFrame) -> dict:
    """Three tiles a row: each model's probability and call at its threshold; returns each tile's slot for its note."""
    notes = {}
    for start in range(0, len(calls), 3):
        for col, (_, r) in zip(container.columns(3), calls.iloc[start:start + 3].iterrows()):
            col.metric(r["Model"], f"{r['probability']:.1%}",
                       f"{'hemorrhage' if r['hemorrhage'] else 'normal'} (t = {r['threshold']:.1%})"
                       + (f" ⚠ says {r['one_class']} for every test case" if r["one_class"] else ""),
                       delta_color="red" if r["hemorrhage"] else "grey", delta_arrow="off",
                       help="At this threshold the model gives every test case the same call: its decision here "
                            "says nothing; read its probability, or pick another operating point." if r["one_class"]
                       else None)
            notes[r["model"]] = col.empty()
            notes[r["model"]].caption("Checking this slice against its training data…")
    return notes


def show_series(calls: pd.DataFrame, names: list[str]) -> None:
    st.subheader("The whole series")
    st.dataframe(series_table(calls, names), hide_index=True, width="stretch",
                 column_config={"Scan score (max)": st.column_config.NumberColumn(format="percent")})
    st.caption("Every model scores every slice; the series scores its most suspicious slice (as the scan-level "
               "metrics do) and is called at the model's threshold. The three most suspicious slices follow: file "
               "name, DICOM instance number, position in the ordered series, probability.")


@st.fragment
def cam_grid(run: Run, calls: pd.DataFrame, image: np.ndarray, mask: np.ndarray | None) -> None:
    explain = explain_api()
    c1, c2 = st.columns(2)
    method = c1.selectbox("CAM method", explain.METHOD_NAMES, key="cam_method",
                          help="'random' is a sanity baseline: a map that explains nothing. 'scorecam' runs one "
                               "forward pass per feature channel: slow on a CPU.")
    alpha = c2.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="cam_alpha")
    explained = calls[calls["cam"]]
    # Every tile becomes a placeholder before any map is computed: a rerun never shows the last maps as if current.
    tiles = [col.empty() for _ in range(0, len(explained), 3) for col in st.columns(3)][:len(explained)]
    for tile in tiles:
        tile.caption(f"Computing {method}…")
    for tile, (_, r) in zip(tiles, explained.iterrows()):
        heat, secs = cam_for(run, r["model"], image, method)
        call = "hemorrhage" if r["hemorrhage"] else "normal"
        tile.image(explain.overlay(image, heat, alpha=alpha, mask=mask), width="stretch",
                   caption=f"{r['Model']}: {r['probability']:.1%} → {call} (t = {r['threshold']:.1%}), {method}"
                           + (", cached" if secs is None else f" in {secs:.2f} s") + peak_note(heat, mask))
    st.caption(f"{explain.colour_key_html()} Each map is scaled to its own peak, so colours compare places within "
               "one map, not one model with another.", unsafe_allow_html=True)


def show_maps(run: Run, calls: pd.DataFrame, shown: Shown) -> None:
    st.subheader("Where the models look")
    st.caption("Class activation maps for the hemorrhage output. A map shows what moved the score, not where "
               "the bleed is. Where the dataset knows the bleed (phantoms, painted sets, CT-ICH masks, BHX boxes) it "
               "is outlined in green on every map, and each map says whether its peak fell on it (core.explain's "
               f"pointing game: within {explain_api().DEFAULT_TOLERANCE_PX} px on a {explain_api().TOLERANCE_SIDE} px "
               "slice, scaled with its size). A sequence model's map here is of this slice seen alone (a stack of "
               "one). Classical models have no map: their permutation feature importances are on the Model cards "
               "page; ensembles inherit their members' explanations.")
    cam_grid(run, calls, shown.image, shown.mask)


def main() -> None:
    run = require_run()
    st.title("Scan")
    source = st.radio("Scan", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="scan_source")
    windows = run_windows(run)   # a set of several: decoded through them, shown in the first (brain); no window choice
    shown = as_trained(run, READERS[source](run, windows), windows)
    banner = st.empty()   # the domain checks' verdict, drawn once every probability is on screen
    calls, seconds, failed, loaded = score(run, shown)
    notes = show_calls(run, shown, calls, seconds, failed)
    calls = with_domain_checks(calls, loaded, shown.image)
    grey = display_grey(shown.image)
    with banner.container():
        domain_banner(run, calls, input_problem(grey, head_region(grey)), run_beyond(run, shown.image))
    for _, r in calls.iterrows():
        notes[r["model"]].caption(domain_note(r))
    if shown.series:
        show_series(calls, shown.names)
    show_maps(run, calls, shown)


main()

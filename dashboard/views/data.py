"""Data: split counts, class and subtype balance, the leakage report, a sample gallery, the phantom subtypes, and
evaluating the run on another folder or an uploaded .zip of one (`python -m core.evaluate` in a subprocess, stored
with the run)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core.io.archive import MAX_BYTES, ArchiveError, extract_dataset
from core.io.framing import framing_of
from core.io.imaging import WINDOW_SETS, windows_of
from core.io.store import data_roots, evaluation_name
from dashboard.frame import REPO, Run, require_run
from dashboard.loaders import run_json, truth as truth_of
from dashboard.models import case_image, outline, split_manifest

# A zip's upload cap: .streamlit/config.toml's server.maxUploadSize, which the server enforces on every upload
# whatever a widget allows, so raise both together.
ZIP_UPLOAD_MB = 50
# leakage.json's pair fields as the table heads them (hash distances in bits: 0 is the same picture).
PAIR_COLUMNS = {"a": "Slice", "b": "Look-alike", "phash": "pHash distance", "dhash": "dHash distance",
                "split_a": "Slice's split", "split_b": "Look-alike's split"}
SUBTYPE_TEXT = {
    "intraparenchymal": "Bleeding inside the brain tissue itself, often from high blood pressure or trauma; "
                        "a bright blob, sometimes with a dark rim of swelling (edema) around it.",
    "subdural": "Blood between the brain and its tough outer membrane (dura), usually from torn veins after "
                "a fall; a crescent hugging the inside of the skull that can cross suture lines.",
    "epidural": "Blood between the dura and the skull, typically from an arterial tear with a skull fracture; "
                "a lens (biconvex) shape that stops at suture lines and can grow fast.",
    "subarachnoid": "Blood in the fluid spaces around the brain, classically from a burst aneurysm; thin bright "
                    "lines tracing the sulci and cisterns, easy to miss.",
    "intraventricular": "Blood inside the ventricles (the brain's fluid chambers); it settles and layers in the "
                        "dependent part of a ventricle.",
}


def start_evaluation(run: Run, folder: Path, shown: str | None = None, remove_after: Path | None = None) -> None:
    """`python -m core.evaluate --run RUN --data FOLDER` in its own process (never in the app's), its output in a log
    file; the handle, the log's path and what the page calls the data (`shown`, else the folder) live in the session,
    which the progress fragment polls. `remove_after`, a temporary folder, is removed once the process ends."""
    fd, log = tempfile.mkstemp(prefix="hemolens-evaluate-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "core.evaluate", "--run", str(run.path), "--data", str(folder)],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if remove_after is not None:
        # A thread, not the progress fragment: the folder goes even when the browser tab is closed mid-evaluation.
        threading.Thread(target=remove_when_done, args=(proc, remove_after), daemon=True).start()
    st.session_state["evaluation"] = {"proc": proc, "log": log, "run": run.path.name, "folder": shown or str(folder)}


def remove_when_done(proc: subprocess.Popen, folder: Path) -> None:
    proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


def log_lines(path: str, last: int = 12) -> list[str]:
    """The last lines of an evaluation's output; progress bars redraw with \\r, so each redraw counts as a line."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
        text = f.read().decode(errors="replace")
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()][-last:]


@st.fragment(run_every=2)
def evaluation_progress() -> None:
    """While the evaluation runs: its output's tail, every 2 s; once it exits, the whole app again (the sidebar then
    lists the stored evaluation)."""
    job = st.session_state["evaluation"]
    if job["proc"].poll() is not None:
        st.rerun()
    st.info(f"Evaluating run **{job['run']}** on `{job['folder']}`…", icon=":material/hourglass_top:")
    st.code("\n".join(log_lines(job["log"])) or "starting…", language=None)


def folder_form(run: Run, running: bool) -> bool:
    """A dataset folder on the machine running the app, by path; True when its evaluation started."""
    with st.form("evaluate"):
        text = st.text_input("Dataset folder", key="eval_folder", placeholder="/data/another_hospital",
                             help="Any layout the training reads (class folders, a labels CSV, DICOM series). Files "
                                  "also in this run's train or validation split are dropped.")
        submitted = st.form_submit_button("Evaluate", key="eval_start", disabled=running)
    folder = Path(text.strip()).expanduser()
    if submitted and not text.strip():
        st.error("Enter the path of a dataset folder first.")
    elif submitted and not folder.is_dir():
        st.error(f"`{text}` is not a folder on the machine running this app.")
    elif submitted:
        start_evaluation(run, folder.resolve())
        return True
    return False


def zip_form(run: Run, running: bool) -> bool:
    """A .zip of a dataset folder, extracted safely (core.io.archive) into a fresh temporary folder and evaluated like
    a folder; True when its evaluation started. The folder is kept only while its evaluation runs: the stored
    evaluation holds the scores and file names, not the images."""
    with st.form("evaluate_zip"):
        upload = st.file_uploader(f"…or a .zip of one (at most {ZIP_UPLOAD_MB} MB, {MAX_BYTES >> 20} MB unpacked)",
                                  type="zip", key="eval_zip", max_upload_size=ZIP_UPLOAD_MB,
                                  help="A zipped dataset folder in any layout the training reads; links, paths "
                                       "outside the folder and decompression bombs are refused.")
        submitted = st.form_submit_button("Evaluate the zip", key="eval_zip_start", disabled=running)
    if submitted and upload is None:
        st.error("Choose a .zip of a dataset folder first.")
    elif submitted:
        try:
            # The system's temporary folder (TMPDIR), not the run's: a run folder holds results, never inputs.
            folder = extract_dataset(upload, tempfile.gettempdir(), evaluation_name(Path(upload.name).stem))
        except ArchiveError as err:
            st.error(str(err))
            return False
        start_evaluation(run, folder, shown=upload.name, remove_after=folder.parent)
        return True
    return False


def evaluation_form(run: Run) -> None:
    """Evaluate this run on another dataset, a folder or a .zip, then say where it is stored, or the one-line
    error."""
    st.subheader("Evaluate this run on another dataset")
    job = st.session_state.get("evaluation")
    running = job is not None and job["proc"].poll() is None
    by_path, by_upload = st.columns(2)
    with by_path:
        started = folder_form(run, running)
    with by_upload:
        started = zip_form(run, running) or started
    if running or started:
        evaluation_progress()
    elif job is not None:
        lines = log_lines(job["log"])
        if job["proc"].returncode == 0:
            st.success(f"{lines[-1] if lines else 'Stored.'} It is now selectable under **Dataset** in the sidebar "
                       f"(run {job['run']}): Leaderboard, Compare and Errors then score it.",
                       icon=":material/check_circle:")
        else:
            st.error(lines[-1] if lines else f"The evaluation ended with exit status {job['proc'].returncode}.")
    st.caption("Runs `python -m core.evaluate --run RUN --data FOLDER` beside the app; the evaluation is stored in "
               "RUN/evaluations/NAME, NAME after the folder (a zip's one top folder, else the zip). A zip is unpacked "
               "into a temporary folder removed when its evaluation ends: its scores stay, its images go (Errors "
               "lists its cases without showing them).")


run = require_run()
st.title("Data")
manifest = split_manifest(*run.key)
manifest = manifest.assign(**{"class": manifest["label"].map({0: "normal", 1: "hemorrhage"})})
facts = run_json(*run.key, "run.json")
st.caption(f"{len(manifest)} images in the split manifest (split.csv) of run **{run.path.name}**"
           + (f", from {', '.join(f'`{r}`' for r in data_roots(facts))}" if data_roots(facts) else "")
           + (" (synthetic phantoms)" if facts.get("synthetic") else "")
           + (f": the normal slices of {', '.join(f'`{r}`' for r in facts['painted_from'])} beside copies with "
              "hemorrhages painted in "
              "(core.insert), each pair in one split" if facts.get("painted_from") else "") + "."
           + (" Every slice was framed to its head (table and letters blanked) before resizing, in training, "
              "evaluation and on the Scan page." if framing_of(facts) == "head" else "")
           + (f" Every slice became the {', '.join(WINDOW_SETS[windows_of(facts)])} HU windows, one channel each; "
              "pages show the brain window." if windows_of(facts) != "brain" else ""))

left, right = st.columns(2)
counts = pd.crosstab(manifest["split"], manifest["class"], margins=True, margins_name="total")
left.markdown("**Images per split and class**")
left.dataframe(counts, width="stretch")
left.plotly_chart(px.histogram(manifest, x="split", color="class", barmode="group", title="Class balance",
                               category_orders={"split": ["train", "val", "test"]}), width="stretch")
bleeds = manifest[manifest["subtype"] != ""]
right.markdown("**Hemorrhage subtypes per split**")
if bleeds.empty:
    right.info("This dataset does not name subtypes.")
else:
    right.dataframe(pd.crosstab(bleeds["subtype"], bleeds["split"], margins=True, margins_name="total"),
                    width="stretch")

evaluation_form(run)

st.subheader("Leakage report")
leak = run_json(*run.key, "leakage.json")
if not leak:
    st.info("This run has no leakage.json.")
else:
    straddling = leak["groups_straddling_splits"]
    cols = st.columns(4)
    cols[0].metric("Near-duplicate pairs", f"{leak['near_duplicate_pairs']:,}")
    cols[1].metric("… across splits, between different heads", f"{leak['near_duplicate_pairs_across_splits']:,}")
    cols[2].metric("Groups straddling splits", len(straddling))
    cols[3].metric("Unreadable files skipped", len(leak["skipped_unreadable"]))
    st.caption(f"{leak['n_groups']} groups (series, patients, near-duplicates) kept whole within one split; the "
               f"largest holds {leak['largest_group']} images.")
    if straddling:
        st.warning(f"Groups in more than one split: {len(straddling)}, so the test split shares series, patients or "
                   "near-duplicates with training: " + ", ".join(straddling[:50]))
    else:
        st.info(f"No group straddles splits: every series, patient and near-duplicate group lies whole in one split, "
                f"which is what keeps the test split unseen. The {leak['near_duplicate_pairs_across_splits']:,} "
                "near-duplicate pairs across splits are expected: each joins similar slices of two different heads "
                "(series or patients the dataset declares apart, which are never merged), alike without being the "
                "same scan; review them below.")
    with st.expander("Near-duplicate pairs (first 500, pairs across splits first)"):
        st.dataframe(pd.DataFrame(leak["pairs"]).rename(columns=PAIR_COLUMNS), width="stretch")
    if leak["skipped_unreadable"]:
        st.dataframe(pd.DataFrame(leak["skipped_unreadable"].items(), columns=["file", "reason"]), width="stretch")

st.subheader("Sample gallery")
c1, c2 = st.columns(2)
split = c1.selectbox("Split", ["train", "val", "test"], key="gallery_split")
seed = c2.number_input("Shuffle", 0, 1000, 0, key="gallery_seed")
sample = manifest[manifest["split"] == split].sample(n=min(8, (manifest["split"] == split).sum()), random_state=seed)
truth = truth_of(sample)
for start in range(0, len(sample), 4):
    for col, (i, row) in zip(st.columns(4), sample.iloc[start:start + 4].iterrows()):
        image, mask, problem = case_image(row["path"])
        if image is None:
            col.error(problem)
        else:
            col.image(outline(image, mask), caption=truth[i], width="stretch")

st.subheader("Hemorrhage types, on synthetic phantoms")
st.image(str(REPO / "dashboard" / "assets" / "phantom_grid.png"),
         caption="One phantom slice per subtype (bleed outlined in red) and three normals with hard negatives: "
                 "calcifications and beam-hardening streaks that models must not call blood.")
for name, text in SUBTYPE_TEXT.items():
    st.markdown(f"- **{name.capitalize()}**: {text}")

"""HemoLens dashboard: `streamlit run dashboard/app.py [-- --checkpoints DIR]`.

The entry point only wires things up: page config, st.navigation over the thin pages in
dashboard/views/, and the sidebar every page shares (notice, run selector, operating point).
The folder is not called pages/: Streamlit treats a pages/ folder beside the entry point as a
legacy multipage app until st.navigation first runs, and would then run a page without this file.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.frame import sidebar, watch_training  # noqa: E402
from dashboard.preload import preload  # noqa: E402

st.set_page_config(page_title="HemoLens", page_icon=":material/neurology:", layout="wide")
PAGES = [
    st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page("views/compare.py", title="Compare", icon=":material/show_chart:"),
    st.Page("views/training.py", title="Training", icon=":material/timer:"),
    st.Page("views/scan.py", title="Scan", icon=":material/radiology:"),
    st.Page("views/errors.py", title="Errors", icon=":material/search:"),
    st.Page("views/teach.py", title="Teach", icon=":material/school:"),
    st.Page("views/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("views/model_cards.py", title="Model cards", icon=":material/badge:"),
]
page = st.navigation(PAGES)
st.session_state["current_run"] = sidebar()  # shared by every page, drawn under the page list
watch_training(st.session_state["current_run"])
try:
    page.run()
finally:   # after the page, which it would slow: the models load in the background for the first upload
    preload(st.session_state["current_run"])

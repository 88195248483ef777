"""The pages that show stored numbers import no torch: a fresh server draws them without seconds of imports (measured
by benchmarks/cold_start.py), while dashboard/preload.py loads the models in the background."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIGHT_PAGES = ["leaderboard", "training"]


def import_lines(path: Path) -> list[str]:
    """The import statements a file runs at its top level, as source."""
    return [ast.unparse(node) for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import,
                                                                                              ast.ImportFrom))]


def heavy_modules_after(*paths: Path) -> list[str]:
    """Which of torch and the model code are loaded once a fresh interpreter has run the files' imports."""
    code = "\n".join(["import sys", f"sys.path.insert(0, {str(REPO)!r})",
                      *(line for p in paths for line in import_lines(p)),
                      "print(sorted(m for m in ('torch', 'torchvision', 'core.families', 'core.nets') "
                      "if m in sys.modules))"])
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page", LIGHT_PAGES)
def test_a_page_of_stored_numbers_imports_no_torch(page):
    """The app's entry point and the page: what a fresh server imports before it draws the page."""
    app, view = REPO / "dashboard" / "app.py", REPO / "dashboard" / "views" / f"{page}.py"
    assert any("dashboard.frame" in line for line in import_lines(view)), "the page's own imports are read"
    assert heavy_modules_after(app, view) == []


def test_the_check_sees_torch_brought_by_an_import(tmp_path):
    """The check can fail: one import of the weights' I/O (core.io.weights) brings torch."""
    page = tmp_path / "page.py"
    page.write_text("from dashboard.frame import require_run\nfrom core.io.weights import load_weights\n")
    assert heavy_modules_after(page) == ["torch"]

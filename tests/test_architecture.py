"""The shape of the code: the layer contract (.importlinter), no import cycle, no family names tested
outside core.families, short functions in core/."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]
FAMILY_KEYS = {"cnn", "sequence", "classical", "ensemble"}
MAX_LINES = 60


def test_layer_contract_holds(monkeypatch):
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / ".importlinter")) == 0


@pytest.mark.parametrize("low, high", [("core/registry.py", "core.run"), ("core/nets/measure.py", "core.families"),
                                       ("core/data/features.py", "core.engine.fit")])
def test_layer_contract_fails_on_a_lower_layer_importing_a_higher_one(tmp_path, low, high):
    """A copy of core/ with one upward import planted inside a function: the contract must break."""
    shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    with open(tmp_path / low, "a") as f:
        f.write(f"\n\ndef _planted():\n    import {high}  # noqa\n")
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports(config_filename='.importlinter'))"],
                            cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and high in result.stdout


def test_no_import_cycle_among_core_modules():
    """Every import statement counts, those inside functions too (grimp reads them all)."""
    graph = grimp.build_graph("core")
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for other in sorted(imports[module]):
            assert state.get(other) != 1, "import cycle: " + " -> ".join(path + [module, other])
            if other not in state:
                visit(other, path + [module])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module, [])


def _python_files(*roots: str) -> list[Path]:
    return [p for root in map(REPO.joinpath, roots) for p in (sorted(root.rglob("*.py")) if root.is_dir() else [root])]


def _family_tests(tree: ast.AST) -> list[int]:
    """Lines that compare with a family name, or read a card's "family" key."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(v, ast.Constant) and v.value in FAMILY_KEYS for v in values):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "family":
            lines.append(node.lineno)
    return lines


def test_no_family_name_is_tested_outside_the_families_and_the_registry():
    allowed = {REPO / "core" / "registry.py", *(REPO / "core" / "families").rglob("*.py")}
    found = {str(p.relative_to(REPO)): lines for p in _python_files("core", "dashboard", "train.py", "benchmarks")
             if p not in allowed and (lines := _family_tests(ast.parse(p.read_text())))}
    assert not found, f"ask core.families instead of testing family names: {found}"


def test_no_function_in_core_is_longer_than_sixty_lines():
    long = [f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in _python_files("core") for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, long


def test_the_store_verifies_the_file_each_family_loads():
    """core.io.store verifies a run without importing the families (torch): its table of model files must name the
    file every family's `load` reads, or a page would trust a file no family loads."""
    from core.families import FAMILIES
    from core.io.store import MODEL_FILES
    assert MODEL_FILES == {key: family.weights_file for key, family in FAMILIES.items()}

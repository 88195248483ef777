"""Command lines refuse a bad value up front with one `hemolens:` line and exit status 2; a run says what it
skipped."""
import json
import shutil
from pathlib import Path

import pytest

import train
from core.benchmark import main as benchmark_main
from core.evaluate import main as evaluate_main
from core.explain.__main__ import main as explain_main
from core.phantom.generate import main as phantom_main

BAD_TRAIN_FLAGS = [
    ["--epochs", "-1"], ["--epochs", "0"], ["--epochs", "2.5"], ["--batch-size", "-2"], ["--batch-size", "0"],
    ["--lr", "-1"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "fast"],
    ["--phantoms", "-3"], ["--phantoms", "0"], ["--image-size", "0"], ["--image-size", "-5"],
    ["--models", ","], ["--models", " , "], ["--models", "resnet999"],
    ["--time-budget", "0"], ["--time-budget", "-1"], ["--time-budget", "nan"],
    ["--run-budget", "0"], ["--run-budget", "nan"], ["--run-budget", "-inf"],
    ["--epoch-size", "0"], ["--epoch-size", "-4"], ["--stack-size", "0"], ["--seed", "-1"],
    ["--sequence-backbone", "knn"], ["--numerics", "fp16"], ["--epochs"], ["--no-such-flag"],
]


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _assert_one_line(capsys, code):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hemolens:"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", BAD_TRAIN_FLAGS, ids=" ".join)
def test_train_refuses_a_bad_value_in_one_line(argv, tmp_path, capsys):
    code = _exit_code(train.main, [*argv, "--out", str(tmp_path / "run"), "--device", "cpu"])
    _assert_one_line(capsys, code)
    assert not (tmp_path / "run").exists()   # refused before anything was written


def test_train_refuses_an_existing_file_as_its_out_folder(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    _assert_one_line(capsys, _exit_code(train.main, ["--out", str(tmp_path / "taken"), "--device", "cpu"]))


def test_given_values_are_kept_and_absent_ones_are_none(tmp_path):
    """Given values are used as given; absent ones (None) take the preset's."""
    args = train.parse_args(["--epochs", "1", "--lr", "1e-3", "--models", "knn, resnet18", "--out", str(tmp_path)])
    assert (args.epochs, args.lr, args.models, args.batch_size) == (1, 1e-3, ["knn", "resnet18"], None)


@pytest.mark.parametrize("main, argv", [
    (phantom_main, ["--out", "OUT", "--n", "0"]), (phantom_main, ["--out", "OUT", "--size", "16"]),
    (phantom_main, ["--out", "OUT", "--stack-size", "0"]), (phantom_main, ["--out", "OUT", "--seed", "-2"]),
    (phantom_main, ["--out", "OUT", "--hemorrhage-fraction", "1.5"]),
    (phantom_main, ["--out", "OUT", "--difficulty", "0.8", "0.2"]), (phantom_main, []),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--phantoms", "0"]),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--size", "-1"]),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--tolerance", "nan"]),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--gallery-columns", "0"]),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--difficulty", "0.5"]),
    (explain_main, ["--run", "RUN", "--out", "OUT", "--methods", ","]),
    (evaluate_main, ["--run", "RUN", "--out", "OUT", "--bootstrap", "-1"]),
    (evaluate_main, ["--run", "RUN", "--out", "OUT", "--models", ","]),
    (evaluate_main, ["--run", "RUN"]),   # without --out the evaluation is stored with the run: of another --data
    (benchmark_main, ["--run", "RUN", "--models", ","]), (benchmark_main, ["--run", "RUN", "--variants", ","]),
])
def test_the_other_command_lines_refuse_bad_counts_in_one_line(main, argv, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("OUT", "RUN") else a for a in argv]
    _assert_one_line(capsys, _exit_code(main, argv))
    assert not (tmp_path / "OUT").exists()


def test_a_run_says_in_one_line_how_many_unreadable_files_it_skipped(tiny_phantoms, tmp_path, capsys):
    data = shutil.copytree(tiny_phantoms, tmp_path / "data", ignore=shutil.ignore_patterns("masks"))
    (data / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "hemorrhage" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    assert train.main(["--data", str(data), "--models", "knn", "--image-size", "32", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert lines == [f"hemolens: skipped 2 unreadable file(s); see {out / 'leakage.json'}"]
    skipped = json.loads((out / "leakage.json").read_text())["skipped_unreadable"]
    assert {Path(p).name for p in skipped} == {"broken.png", "empty.png"}

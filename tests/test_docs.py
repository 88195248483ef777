"""The README and docs/ stay true to the code: a short front door, commands whose flags exist, findings the code
cites, links that lead somewhere. Each check is a plain function, tested on the real files and, so that a broken
check cannot pass silently, on a small bad example of what it must catch."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NOTES = REPO / "docs" / "NOTES.md"
MAX_README_LINES = 160
MAX_PARAGRAPH_WORDS = 130
SKIP_DIRS = {".git", ".venv", "node_modules", "data", "checkpoints", "__pycache__"}
PYTHON = re.compile(r"(^|/)python3?(\.\d+)?$")


def guide_pages() -> list[Path]:
    """README.md and the user guide's pages (docs/*.md), whose commands a reader runs."""
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def all_pages() -> list[Path]:
    """Every page a reader follows links through: the guide and docs/notes/."""
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


# --- (a) the README is short and its paragraphs are too --------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    """Blocks of consecutive non-blank lines outside code blocks that are not a table, a list of links, an image or
    a heading: the prose a reader has to get through."""
    blocks, current, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            blocks.append(current)
            current = []
        elif fenced or not line.strip() or line.lstrip().startswith("#"):
            blocks.append(current)
            current = []
        else:
            current.append(line)
    blocks.append(current)

    def prose(block: list[str]) -> bool:
        items = [ln for ln in block if re.match(r"\s*([-*+]|\d+\.)\s", ln)]
        if all(ln.lstrip().startswith("|") for ln in block):
            return False                       # a table
        if all(ln.lstrip().startswith("![") for ln in block):
            return False                       # images
        if items and all(re.match(r"\s*([-*+]|\d+\.)\s+\[[^\]]*\]\([^)]*\)", ln) for ln in items):
            return False                       # a list of links
        return True

    return ["\n".join(b) for b in blocks if b and prose(b)]


def long_paragraphs(text: str, limit: int = MAX_PARAGRAPH_WORDS) -> list[str]:
    return [p for p in paragraphs(text) if len(p.split()) > limit]


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_paragraphs_are_short():
    long = long_paragraphs(README.read_text())
    assert not long, "README paragraphs over %d words (split them or move them to docs/):\n%s" % (
        MAX_PARAGRAPH_WORDS, "\n---\n".join(p[:200] for p in long))


def test_paragraph_check_catches_a_long_paragraph():
    wall = " ".join(["word"] * (MAX_PARAGRAPH_WORDS + 1))
    text = f"# Title\n\n{wall}\n\n| a | b |\n|---|---|\n| {wall} | x |\n\n```\n{wall}\n```\n\n- [x](y.md)\n"
    assert long_paragraphs(text) == [wall]
    assert long_paragraphs(f"- {wall}\n") == [f"- {wall}"]           # a list of prose is prose


# --- (b) commands in the docs use flags that exist ---------------------------------------------------------------


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block as token lists: continuation lines joined, comments dropped, split at ;, &&, ||
    and pipes."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as err:   # an unbalanced quote: say which line
            raise AssertionError(f"cannot parse shell line {line!r}: {err}") from err
        current = []
        for tok in tokens:
            if tok in {";", "&&", "||", "|", "&"}:
                out.append(current)
                current = []
            else:
                current.append(tok)
        out.append(current)
    return [c for c in out if c]


def entry_point(tokens: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(the entry point, its arguments) for `python train.py`, `python -m core.X`, `torchrun ... train.py` or
    `make TARGET`, with environment assignments and the interpreter's path ignored; None for anything else."""
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    head = tokens[0]
    if head == "make":
        return ("make",), tokens[1:]
    if PYTHON.search(head) and len(tokens) > 1:
        if tokens[1] == "train.py":
            return ("train.py",), tokens[2:]
        if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].startswith("core."):
            return ("-m", tokens[2]), tokens[3:]
        return None
    if head == "torchrun" and "train.py" in tokens:
        return ("train.py",), tokens[tokens.index("train.py") + 1:]
    return None


def flags_used(args: list[str]) -> list[str]:
    """The option names among `args`: `--name`, `--name=value`, `[--name]` and `--a|--b` alike."""
    found = []
    for arg in args:
        for part in arg.strip("[]").split("|"):
            part = part.strip("[]")
            if re.match(r"^--?[A-Za-z]", part):
                found.append(part.split("=")[0])
    return found


HELP: dict[tuple[str, ...], str] = {}


def help_texts(entries) -> dict[tuple[str, ...], str]:
    """`python ENTRY --help` of each entry point, run side by side (each imports torch: seconds apart) and kept."""
    todo = sorted(set(entries) - set(HELP))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    running = {e: subprocess.Popen([sys.executable, *e, "--help"], cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for e in todo}
    for entry, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"`python {' '.join(entry)} --help` failed: {err[-500:]}"
        HELP[entry] = out
    return {e: HELP[e] for e in entries}


def help_text(entry: tuple[str, ...]) -> str:
    return help_texts([entry])[entry]


def known_flags(help_output: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_output))


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), flags=re.M))


def bad_flags(text: str, flags_of, targets: set[str]) -> list[str]:
    """'command: problem' for each command of `text`'s shell blocks that uses an option its entry point does not
    have, or a make target the Makefile does not define; flags_of(entry) gives an entry point's options."""
    problems = []
    for block in bash_blocks(text):
        for tokens in commands(block):
            found = entry_point(tokens)
            if found is None:
                continue
            entry, args = found
            shown = " ".join(tokens)
            if entry == ("make",):
                missing = [a for a in args if not a.startswith("-") and "=" not in a and a not in targets]
                problems += [f"{shown}: no make target {t!r}" for t in missing]
                continue
            known = flags_of(entry)
            problems += [f"{shown}: {flag} is not an option of {' '.join(entry)}"
                         for flag in flags_used(args) if flag not in known]
    return problems


def test_documented_commands_use_real_flags():
    targets, problems = make_targets(), []
    found = [entry_point(c) for page in guide_pages() for b in bash_blocks(page.read_text()) for c in commands(b)]
    found = [f for f in found if f is not None]
    help_texts({entry for entry, _ in found if entry != ("make",)})   # all at once, before the checks ask
    seen = len(found)
    for page in guide_pages():
        problems += [f"{page.relative_to(REPO)}: {p}" for p in
                     bad_flags(page.read_text(), lambda entry: known_flags(help_text(entry)), targets)]
    assert seen >= 10, f"only {seen} commands found in README.md and docs/*.md: is the parser broken?"
    assert not problems, "\n".join(problems)


def test_flag_check_catches_a_wrong_flag():
    text = ("```bash\nHF_HUB_OFFLINE=1 .venv/bin/python train.py --data A \\\n  --bogus 3   # a comment --nope\n"
            "python -m core.evaluate --run R --out O && make demo nosuchtarget\n"
            "torchrun --nproc_per_node=2 train.py --device cpu [--resum]\n```\n"
            "```python\npython train.py --ignored-here\n```\n")
    flags = {("train.py",): {"--data", "--device", "--resume"}, ("-m", "core.evaluate"): {"--run"}}
    problems = bad_flags(text, flags.get, {"demo", "test"})
    assert len(problems) == 4, problems
    assert any("--bogus" in p for p in problems) and any("--resum" in p for p in problems)
    assert any("--out" in p for p in problems) and any("nosuchtarget" in p for p in problems)


def test_help_parsing_finds_the_flags():
    flags = known_flags(help_text(("-m", "core.phantom")))
    assert {"--out", "--n", "--twins", "-h"} <= flags


# --- (c) every findings section the code cites exists ------------------------------------------------------------


def cited_titles(text: str) -> list[str]:
    """Titles cited as `docs/NOTES.md, "Title"`, a title broken over comment or docstring lines joined again."""
    titles = []
    for raw in re.findall(r'docs/NOTES\.md,\s*"([^"]+)"', text):
        titles.append(" ".join(re.sub(r"\n\s*#?\s*", " ", raw).split()))
    return titles


def heading_list(markdown: str) -> list[str]:
    """A Markdown page's headings in order, those inside code blocks left out."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            out.append(m.group(1))
    return out


def headings(markdown: str) -> set[str]:
    return set(heading_list(markdown))


def python_files() -> list[Path]:
    """Every Python file of the project but this one, whose examples cite sections on purpose."""
    return [p for p in REPO.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(REPO).parts)
            and p.resolve() != Path(__file__).resolve()]


def test_cited_findings_exist():
    sections = headings(NOTES.read_text())
    cited = {(title, str(p.relative_to(REPO))) for p in python_files() for title in cited_titles(p.read_text())}
    assert len(cited) >= 10, "the code cites fewer findings than expected: is the pattern broken?"
    missing = sorted(f'{where}: "{title}"' for title, where in cited if title not in sections)
    assert not missing, "cited in code but not a heading of docs/NOTES.md:\n" + "\n".join(missing)


def test_citation_check_catches_a_missing_section():
    code = ('x = 1  # why (docs/NOTES.md, "Run budget").\n'
            '"""... (docs/NOTES.md, "CAM layer\n    depth on the CPU demo")."""\n'
            '# long (docs/NOTES.md, "Painted bleeds: what\n# each subtype looks like")\n')
    assert cited_titles(code) == ["Run budget", "CAM layer depth on the CPU demo",
                                  "Painted bleeds: what each subtype looks like"]
    assert "Nowhere" not in headings("# Findings\n### Run budget\n```\n## Nowhere\n```\n")
    assert "Run budget" in headings("# Findings\n### Run budget\n")


# --- (d) relative links lead to files that exist ------------------------------------------------------------------


def link_targets(text: str) -> list[str]:
    """Every link and image target of a Markdown page, outside code blocks and inline code."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats
    numbered."""
    found, repeats = set(), {}
    for title in heading_list(markdown):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = repeats[slug] = repeats.get(slug, -1) + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path, text: str) -> list[str]:
    """Targets of `page` (holding `text`) that lead nowhere: a missing file, or a #place that is not a heading of the
    Markdown page it names."""
    broken = []
    for target in link_targets(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
            continue                                  # a web address or mail
        path, _, place = target.partition("#")
        path = path.split("?")[0]
        if not path:                                  # a place on this page
            if place not in slugs(text):
                broken.append(target)
        elif not (page.parent / path).exists():
            broken.append(target)
        elif place and path.endswith(".md") and place not in slugs((page.parent / path).read_text()):
            broken.append(target)
    return broken


def test_relative_links_exist():
    problems = [f"{page.relative_to(REPO)}: {target}" for page in all_pages()
                for target in broken_links(page, page.read_text())]
    assert not problems, "links to files that do not exist:\n" + "\n".join(problems)


def test_link_check_catches_a_missing_file_or_place():
    page = REPO / "docs" / "page.md"
    text = ("# Top\n## Top\n[ok](NOTES.md#run-budget) [up](../README.md) ![img](../dashboard/assets/scan.png) "
            "[web](https://example.org/x.md#x) [here](#top) [again](#top-1) `[code](nowhere.md)`\n"
            "[gone](notes/nothing.md) ![lost](lost.png) [no place](NOTES.md#no-such-section) [nor here](#bottom)\n"
            "```\n[fenced](nowhere.md)\n```\n")
    assert broken_links(page, text) == ["notes/nothing.md", "lost.png", "NOTES.md#no-such-section", "#bottom"]
    assert {"painted-bleeds-what-each-subtype-looks-like", "the-fields-published-datasets"} <= slugs(
        "## Painted bleeds: what each subtype looks like\n## The field's published datasets\n")


@pytest.mark.parametrize("page", ["docs/datasets.md", "docs/training.md", "docs/evaluation.md", "docs/notes/log.md"])
def test_the_guide_exists_and_is_linked_from_the_readme(page):
    assert (REPO / page).is_file()
    assert f"]({page})" in README.read_text()

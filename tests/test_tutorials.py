"""The tutorials in docs/guide/tutorials/ run as written.

Every fenced ```bash and ```python block of a tutorial is run, in order, in
a fresh temporary directory per tutorial: each ``stellarfit ...`` line of a
bash block goes through the CLI entry point in this process (exit code 0
required), each python block is exec'd in a namespace shared by the blocks of
that tutorial.  The settings tested are the ones the reader sees: there is no
substitution mechanism.  Afterwards the files the tutorial says it makes must
exist and be non-empty.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from stellarfit.cli.main import build_parser, main

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = DOCS / "guide" / "tutorials"

# tutorial -> files (or directories) it must leave in its working directory
EXPECTED_OUTPUTS = {
    "synth.md": ["sun.fits"],
    "grid.md": ["tiny.h5"],
    "train.md": ["tiny.h5", "tiny-payne/emulator.json", "tiny-payne/arrays.npz"],
    "evaluate.md": ["tiny.h5"],
    "fit.md": ["fit.fits", "report.html", "fit.json"],
    "report.md": ["fit.fits", "fit_report.html", "plots/fit_report_spectrum.png", "plots/fit_report_zoom.png"],
    "batch.md": ["spectra/star_a.fits", "spectra/star_b.fits", "catalog.csv"],
    "crb.md": ["crb.html", "crb.csv"],
    "compare.md": ["compare.json"],
    "predict.md": ["tiny-encoder/encoder.json", "catalog.fits"],
    "attention.md": ["maps/attention.json", "giant/attention.json"],
    "encoder-adapt.md": ["tiny-encoder/encoder.json", "tiny.h5", "tiny-adapted/encoder.json", "tiny-adapted/arrays.npz"],
}
# tutorials over ~30 s on a busy 2-core machine (the others take 5-30 s, 2 min in all)
SLOW: set[str] = {"compare.md", "attention.md"}  # compare: two emulators' first MAP fits, each compiling, 40-80 s;
# attention: two runs of the shipped TransformerPayne's maps and Jacobian, ~40 s each

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, source) of every fenced code block, in order."""
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def bash_commands(source: str) -> list[list[str]]:
    """argv (without the leading ``stellarfit``) of each command of a bash block."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line, comments=True)
        assert argv[0] == "stellarfit", f"tutorial bash blocks hold stellarfit commands only, got {line!r}"
        commands.append(argv[1:])
    return commands


def run_tutorial(name: str, directory: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(directory)
    monkeypatch.setenv("STELLARFIT_DEBUG", "1")  # a failing command raises with its traceback
    blocks = code_blocks((TUTORIALS / name).read_text())
    assert blocks, f"{name} has no code blocks"
    namespace: dict = {"__name__": "__tutorial__"}
    for index, (language, source) in enumerate(blocks):
        where = f"{name} block {index + 1}"
        if language == "bash":
            for argv in bash_commands(source):
                start = time.perf_counter()
                code = main(argv)
                captured = capsys.readouterr()
                print(f"{where}: stellarfit {shlex.join(argv)} -> {code} ({time.perf_counter() - start:.1f} s)")
                assert code == 0, f"{where}: `stellarfit {shlex.join(argv)}` exited {code}\n{captured.err}"
        elif language == "python":
            exec(compile(source, where, "exec"), namespace)
        else:
            pytest.fail(f"{where}: code block without a language (```bash or ```python)")
    for output in EXPECTED_OUTPUTS[name]:
        path = directory / output
        assert path.exists(), f"{name} did not make {output}"
        assert path.is_dir() or path.stat().st_size > 0, f"{name} made an empty {output}"


def _params():
    for name in EXPECTED_OUTPUTS:
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, marks=marks, id=name.removesuffix(".md"))


@pytest.mark.parametrize("name", list(_params()))
def test_tutorial_runs(name, tmp_path, monkeypatch, capsys):
    run_tutorial(name, tmp_path, monkeypatch, capsys)


def test_every_tutorial_is_tested_and_linked():
    on_disk = {path.name for path in TUTORIALS.glob("*.md")}
    assert on_disk == set(EXPECTED_OUTPUTS), "add new tutorials to EXPECTED_OUTPUTS (and old ones out)"
    index = (DOCS / "guide" / "index.md").read_text()
    assert "tutorials/" in index


def test_every_user_command_has_a_tutorial():
    subcommands = next(action for action in build_parser()._actions if action.dest == "command").choices
    covered = set()
    for path in TUTORIALS.glob("*.md"):
        for language, source in code_blocks(path.read_text()):
            if language == "bash":
                covered.update(argv[0] for argv in bash_commands(source))
    assert set(subcommands) - {"engines"} <= covered


def test_block_parser():
    text = "intro\n```bash\nstellarfit fit example \\\n  --json  # a comment\n\n```\ntext\n```python\nx = 1\n```\n"
    blocks = code_blocks(text)
    assert [language for language, _ in blocks] == ["bash", "python"]
    assert bash_commands(blocks[0][1]) == [["fit", "example", "--json"]]
    with pytest.raises(AssertionError, match="stellarfit commands only"):
        bash_commands("rm -rf x\n")

"""The README's Python examples run as written, and its first lines are the two commands."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install") and "pip install -e ." in first_block[0]
    ci = (README.parent / ".ci" / "run").read_text()
    assert first_block[1] in ci  # .ci/run runs exactly the README's test command


def test_readme_result_tables_are_generated_from_committed_results(script):
    """Every generated block names a committed result file and equals what scripts/readme_tables.py makes of it
    (so no table number is typed by hand); a block edited by hand is found and rewritten."""
    mod = script("readme_tables")
    text = README.read_text()
    sources = mod.MARKER.findall(text)
    assert {"results/bench-cpu/benchmark.csv", "results/neon-trees-plateau/plateau.md",
            "results/neon-trees-cpu/compare.csv"} <= set(sources)  # fmt: skip
    assert mod.main(["--check"]) == 0, "README tables out of date: run python scripts/readme_tables.py"
    first = mod.MARKER.search(text)
    end = text.index(mod.END, first.end())
    edited = text[: first.end()] + "\n| a hand-typed 0.999 |\n" + text[end:]
    fixed, changed = mod.regenerate(edited)
    assert changed == [first.group(1)] and fixed == text
    with pytest.raises(SystemExit, match="no '<!-- end generated -->' line"):
        mod.regenerate(text[: first.end()] + "\n| no end |\n")

"""The README is a short door: at most 10 KB, its quick start is exactly the two commands (the test
command being the one CI runs), and every docs/ file it links to exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_BYTES = 10 * 1024

MAIN_JOB = "./setup.sh && .venv/bin/python search/main_job.py"
TESTS = "./setup.sh && .venv/bin/python -m pytest -q"
# The pages the README must send readers to (docs/scaling.md, docs/muse_format.md and others may be added).
DOCS_LINKED = {"docs/search.md", "docs/accuracy.md", "docs/benchmarks.md", "docs/deployment.md",
               "docs/sampler_experiments.md", "docs/scaling.md", "docs/muse_format.md"}


def section(text: str, title: str) -> str:
    """The body of the `## title` section: up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks, each without its fences and trailing newline."""
    return [m.group(1).rstrip("\n") for m in re.finditer(r"^```[^\n]*\n(.*?)^```\s*$", text, re.M | re.S)]


def ci_command(script: str) -> str:
    """The command `.ci/run` runs: its last non-blank, non-comment line."""
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines[-1]


def docs_links(text: str) -> set[str]:
    """docs/ paths the README links to: markdown link targets and `docs/...` code spans, anchors dropped."""
    targets = re.findall(r"\]\((docs/[^)\s#]+)(?:#[^)]*)?\)", text) + re.findall(r"`(docs/[^`\s#]+)`", text)
    return {t.rstrip("/") for t in targets}


def test_readme_is_at_most_10_kb():
    size = len(README.read_bytes())
    assert size <= MAX_BYTES, f"README.md is {size} bytes, more than {MAX_BYTES}: move detail into docs/"


def test_quick_start_is_exactly_the_two_commands_and_ci_runs_the_test_command():
    blocks = code_blocks(section(README.read_text(encoding="utf-8"), "Quick start"))
    assert blocks == [MAIN_JOB, TESTS], f"the quick start's code blocks are {blocks}"
    assert ci_command((ROOT / ".ci" / "run").read_text(encoding="utf-8")) == blocks[1], \
        ".ci/run does not run the README's test command"


def test_every_docs_file_the_readme_links_to_exists():
    links = docs_links(README.read_text(encoding="utf-8"))
    assert DOCS_LINKED <= links, f"the README does not link to {sorted(DOCS_LINKED - links)}"
    missing = sorted(link for link in links if not (ROOT / link).exists())
    assert not missing, f"the README links to docs that do not exist: {missing}"


def test_the_helpers_see_what_they_should():
    """The parsers themselves: a broken README or .ci/run would be caught."""
    text = "## Quick start\n\n```\nA\n```\n\nx\n\n```\nB\n```\n\n## Next\n\n```\nC\n```\n"
    assert code_blocks(section(text, "Quick start")) == ["A", "B"]
    assert ci_command("#!/usr/bin/env bash\n# c\nset -e\ncd x\n./setup.sh && pytest\n\n") == "./setup.sh && pytest"
    assert docs_links("[a](docs/a.md#x), `docs/b.md`, [c](bench/)") == {"docs/a.md", "docs/b.md"}


def test_the_demo_study_is_shown_whole_as_it_is():
    shown = code_blocks(section(README.read_text(), "The demo study: `studies/demo.yaml`"))
    assert shown == [(ROOT / "studies" / "demo.yaml").read_text().rstrip("\n")]

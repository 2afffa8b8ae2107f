"""The README is the five-minute read and docs/ the rest: every link between them leads somewhere, and each
generated block is in the file its writer writes."""

import csv
import re
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")   # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)   # code blocks hold no links


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(files: list[Path]) -> list[str]:
    """Every relative link of these Markdown files whose file, or heading in it, does not exist."""
    broken = []
    for doc in files:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):   # http:, https:, mailto: are not checked (no network here)
                continue
            path, _, fragment = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text()), re.MULTILINE)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    return broken


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_the_readme_and_docs_leads_somewhere():
    assert len(documents()) >= 8
    assert broken_links(documents()) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "models.md").write_text("# The models\n\n## Liquidation price\n")
    (tmp_path / "README.md").write_text(
        "[models](docs/models.md) [price](docs/models.md#liquidation-price) [web](https://example.com)\n"
        "[gone](docs/gone.md) [wrong heading](docs/models.md#brackets) ![shot](tests/screenshots/none.png)\n"
        "```\n[in code](not/checked.md)\n```\n")
    assert broken_links([tmp_path / "README.md"]) == [
        "README.md: docs/gone.md (no such file)", "README.md: docs/models.md#brackets (no such heading)",
        "README.md: tests/screenshots/none.png (no such file)"]


def test_the_readme_is_a_five_minute_read_that_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    linked = {target.partition("#")[0] for target in LINK.findall(readme)}
    assert {f"docs/{doc.name}" for doc in (ROOT / "docs").glob("*.md")} <= linked


def test_each_benchmark_block_is_in_the_file_its_writer_writes():
    """tools/benchmark.py --readme (and its load form, tools/load_benchmark.py) replaces its blocks in
    docs/performance.md: each must be there, whole."""
    assert 'DOCS = ROOT / "docs" / "performance.md"' in (ROOT / "tools" / "benchmark.py").read_text()
    writer = "".join((ROOT / "tools" / name).read_text() for name in ("benchmark.py", "load_benchmark.py"))
    blocks = re.findall(r'write_readme_table\("([^"]+)", "([^"]+)"', writer)
    assert len(blocks) == 3
    performance = (ROOT / "docs" / "performance.md").read_text()
    for start, end in blocks:
        assert re.search(f"<!-- {re.escape(start)} -->\n.+?<!-- {re.escape(end)} -->", performance, re.DOTALL), start


def test_the_problem_kinds_in_the_docs_are_the_seed_the_build_reads():
    """docs/data-quality.md's table of problem kinds is sql/seeds/data_quality_problems.csv, row for row (the
    build fails on a kind the seed lacks; datasette.yaml's check of `problem` reads the same table)."""
    with (ROOT / "sql" / "seeds" / "data_quality_problems.csv").open() as f:
        seed = list(csv.DictReader(f))
    table = "| problem | what it means |\n|---|---|\n" + "".join(f"| `{r['problem']}` | {r['meaning']} |\n" for r in seed)
    block = re.search(r"<!-- problem kinds: sql/seeds/data_quality_problems.csv -->\n(.*?)<!-- end of problem kinds -->",
                      (ROOT / "docs" / "data-quality.md").read_text(), re.DOTALL)
    assert block and block[1] == table, "docs/data-quality.md's problem kinds differ from the seed; they should read:\n" + table
    assert len({r["problem"] for r in seed}) == len(seed) >= 20


def test_ci_runs_exactly_the_readmes_test_command():
    """.ci/run installs what the tests need from Debian, then runs the README's second command as written."""
    commands = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(commands) >= 2 and "pytest" in commands[1]
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == commands[1]

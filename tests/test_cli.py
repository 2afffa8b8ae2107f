"""The command line as a new user meets it on a fresh clone: what it tells them to run works as written."""

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from liquidation_heatmap import cli


def fresh_clone(folder: Path) -> Path:
    """What `git clone` gives: the code, the SQL, the YAML, the plugins and templates (the build renders the stored
    answers with them), a data/ folder without data/raw, data/demo or any database."""
    for name in ("build.py", "metadata.yml", "datasette.yaml"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("sql", "liquidation_heatmap", "plugins", "templates"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "data").mkdir()
    shutil.copy(ROOT / "data" / "README.md", folder / "data" / "README.md")
    return folder


def run(checkout: Path, words: list[str]) -> subprocess.CompletedProcess:
    """A command run in the checkout, as the user types it there (its first word: the Python that runs the tests)."""
    return subprocess.run(words, cwd=checkout, capture_output=True, text=True, timeout=600, check=False)


def advised(stderr: str) -> list[list[str]]:
    """The commands an error tells the user to run (each on a line of its own, indented), as words."""
    return [shlex.split(line) for line in stderr.splitlines() if line.startswith("  ")]


def test_build_on_a_fresh_clone_names_commands_that_work_as_written(tmp_path):
    checkout = fresh_clone(tmp_path)
    script = [sys.executable, "build.py"]
    # no data/raw and no demo: the advice is the default run, which simulates the demo and builds it
    # (test_build.py's test_no_arguments_on_a_fresh_clone_simulates_then_builds follows it)
    first = run(checkout, [*script, "build"])
    assert first.returncode == 2 and "no Binance files under data/raw" in first.stderr, first.stderr
    [default_run] = advised(first.stderr)
    assert default_run[1:] == ["build.py"] and cli.parse_args(default_run[2:]).command is None
    assert "data/demo/liquidations.db" in first.stderr
    # the user runs `demo` instead (one day, to be quick): it says how to build what it wrote, and so does `build`
    demo = run(checkout, [*script, "demo", "--days", "1", "--trades-per-day", "1000"])
    assert demo.returncode == 0, demo.stderr
    [told_by_demo] = [shlex.split(line.split(":", 1)[1]) for line in demo.stdout.splitlines() if line.startswith("Build them:")]
    again = run(checkout, [*script, "build"])
    assert again.returncode == 2
    build_demo, default_run = advised(again.stderr)
    assert build_demo == told_by_demo == [*build_demo[:2], "build", "--data", "data/demo/raw",
                                          "--db", "data/demo/liquidations.db"]
    assert default_run[1:] == ["build.py"]
    # followed literally, in the order given, each works (its first word is this Python, or `python` if that is
    # the one on PATH)
    for command in (build_demo, default_run):
        followed = run(checkout, command)
        assert followed.returncode == 0, followed.stderr[-2000:]
    with sqlite3.connect(checkout / "data" / "demo" / "liquidations.db") as con:
        assert con.execute("SELECT count(*) FROM price_klines").fetchone()[0] == 24 * 60   # the day's 1m bars
    assert not (checkout / "data" / "raw").exists() and not (checkout / "data" / "liquidations.db").exists()
    assert shlex.split(followed.stdout.split("Browse it:")[1])[1:3] == ["build.py", "serve"]

def test_serve_without_a_database_on_a_fresh_clone_names_the_run_that_builds_one(tmp_path):
    checkout = fresh_clone(tmp_path)
    result = run(checkout, [sys.executable, "build.py", "serve"])
    assert result.returncode == 2 and "no database at data/liquidations.db" in result.stderr, result.stderr
    [command] = advised(result.stderr)
    assert command[1:] == ["build.py"]   # the default run: data/raw's files, or the demo (see the test above)


def test_a_regular_install_runs_from_any_folder_with_its_own_sql(tmp_path):
    """pip install . (not -e): the package, and the SQL, YAML, templates and plugins as its data files under the
    prefix; the installed command then simulates and builds in an empty folder, reading none of the checkout."""
    prefix, work = tmp_path / "prefix", tmp_path / "work"
    # (--ignore-installed: pip would otherwise first uninstall the checkout's editable install the tests run in)
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
                                str(ROOT)], capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = next(prefix.glob("lib/python3*/site-packages"))
    share = prefix / "share" / "liquidation-heatmap"
    assert (share / "sql" / "stages.yml").is_file() and (share / "datasette.yaml").is_file()
    assert (share / "templates" / "pages" / "heatmap.html").is_file() and (share / "plugins" / "read_only.py").is_file()
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}   # (its package first, before the checkout's editable one)
    command = [str(prefix / "bin" / "liquidation-heatmap")]
    for words in (["demo", "--days", "1", "--trades-per-day", "500"],
                  ["build", "--data", "data/demo/raw", "--db", "data/demo/liquidations.db"]):
        result = subprocess.run(command + words, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(work / "data" / "demo" / "liquidations.db") as con:
        assert con.execute("SELECT count(*) FROM stored_answers").fetchone()[0] > 0   # its plugins and YAML, rendered
    probe = subprocess.run([sys.executable, "-c", "from liquidation_heatmap import project; print(project.ROOT)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()) == share.resolve()

"""Where the project's parts are, and how the program speaks to its user: the folders (the SQL, the YAML, the
templates and plugins beside the package; the data folders), the error a user must fix, the log."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent    # the project: sql/, templates/, plugins/, the YAML, data/
SQL_DIR = ROOT / "sql"
SQL_STAGES: dict[str, list[str]] = yaml.safe_load((SQL_DIR / "stages.yml").read_text())   # stage -> files, in order
DATA_DIR = ROOT / "data" / "raw"                 # real Binance files (what `fetch` writes)
DEFAULT_DB = ROOT / "data" / "liquidations.db"
DEMO_DIR = ROOT / "data" / "demo"                # the simulated demo, apart: its files in raw/, its own database
DATABASE_NAME = "liquidations"                   # Datasette names the database after the file's stem


class BuildError(Exception):
    """A problem the user must fix; printed without a traceback, exit status 2."""


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.perf_counter()


def shown(path: Path) -> str:
    """A path as the user can type it where they are: from the current folder if it is under it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def command_line(*words: str) -> str:
    """A command of this program as the user can type it where they are: the installed `liquidation-heatmap` if
    that is what they ran, else this script with the Python running it (plain `python` if that is the one on
    PATH, as in an activated venv)."""
    if Path(sys.argv[0]).name == "liquidation-heatmap":
        return shlex.join(["liquidation-heatmap", *words])
    on_path = shutil.which("python")
    python = "python" if on_path and Path(on_path).absolute() == Path(sys.executable).absolute() else shown(sys.executable)
    return shlex.join([python, shown(ROOT / "build.py"), *words])

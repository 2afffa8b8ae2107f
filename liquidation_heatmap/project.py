"""Where the project's parts are, and how the program speaks to its user: the folders (the SQL, the YAML, the
templates and plugins beside the package; the data folders), the error a user must fix, the log."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import yaml

CHECKOUT = Path(__file__).resolve().parent.parent


def installed_root() -> Path:
    """Where a regular install (pip install .) put the SQL, YAML, templates and plugins (pyproject.toml's
    data-files, share/liquidation-heatmap under its prefix), as its own record of its files says."""
    try:
        recorded = distribution("liquidation-heatmap").files or []
    except PackageNotFoundError:
        recorded = []
    found = [f for f in recorded if f.as_posix().endswith("share/liquidation-heatmap/metadata.yml")]
    if not found:
        raise SystemExit(f"error: no sql/ beside {Path(__file__).parent} and no installed copy of it: install the "
                         "project with pip install . (or pip install -e . in its checkout)")
    return Path(found[0].locate()).resolve().parent


# The project's SQL, YAML, templates and plugins: the checkout's (run from it, or installed with pip install -e .),
# else those a regular install put under its prefix.
ROOT = CHECKOUT if (CHECKOUT / "sql" / "stages.yml").is_file() else installed_root()
HOME = CHECKOUT if ROOT == CHECKOUT else Path.cwd()   # where data/ is: the checkout's, else the current folder's
SQL_DIR = ROOT / "sql"
SQL_STAGES: dict[str, list[str]] = yaml.safe_load((SQL_DIR / "stages.yml").read_text())   # stage -> files, in order
DATA_DIR = HOME / "data" / "raw"                 # real Binance files (what `fetch` writes)
DEFAULT_DB = HOME / "data" / "liquidations.db"
DEMO_DIR = HOME / "data" / "demo"                # the simulated demo, apart: its files in raw/, its own database
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

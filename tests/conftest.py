"""Shared fixtures: simulated Binance files and databases built from them, once per test session."""

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import coverage
import pytest

from liquidation_heatmap import pipeline, serve, simulate
from liquidation_heatmap.options import DemoOptions

ROOT = Path(__file__).resolve().parent.parent
DAYS = 4
START = "2024-09-01"


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id) -> Path:
    """A folder this run's test processes share: its pytest-xdist workers' common parent, or without workers
    the run's own temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def made_once(shared: Path, name: str, make) -> Path:
    """shared/name, made by make(folder) in the first worker to ask for it while the others wait (a kernel
    lock on shared/name.lock), then used by all: a session's files and builds are made once per run, not once
    per worker. A failed make leaves no mark: the next to ask tries again (and fails the same way)."""
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@contextlib.contextmanager
def untraced():
    """Coverage paused: for the simulated markets the fixtures make. The simulator is plain Python, minute by
    minute, and tracing it doubles its time; its own tests (test_simulate.py) measure its coverage."""
    measuring = coverage.Coverage.current()
    if measuring:
        measuring.stop()
    try:
        yield
    finally:
        if measuring:
            measuring.start()


def simulated(out: Path, **settings) -> Path:
    """simulate.simulate(out, **settings) untraced and quiet: a fixture's market."""
    with untraced():
        simulate.simulate(out, progress=lambda *_: None, **settings)
    return out


@pytest.fixture(scope="session")
def demo_dir(shared_dir) -> Path:
    return made_once(shared_dir, "demo", lambda out: simulated(out, days=DAYS, seed=7, start=START, trades_per_day=3000))


def build_into(data: Path):
    """make(folder) for made_once: build data into folder/liquidations.db, as a user runs build.py."""
    def make(folder: Path) -> None:
        result = run_build("--data", str(data), "--db", str(folder / "liquidations.db"))
        assert result.returncode == 0, result.stderr
    return make


@pytest.fixture(scope="session")
def demo_db(demo_dir, shared_dir) -> Path:
    return made_once(shared_dir, "built", build_into(demo_dir)) / "liquidations.db"


def run_build(*args: str, command: str = "build", traced: bool = True) -> subprocess.CompletedProcess:
    """build.py as a user runs it, in its own process; traced=False: without coverage measuring it (a fixture's
    simulated market: see untraced)."""
    env = None if traced else {name: value for name, value in os.environ.items() if name != "COVERAGE_PROCESS_CONFIG"}
    return subprocess.run([sys.executable, str(ROOT / "build.py"), command, *args],
                          capture_output=True, text=True, timeout=600, check=False, env=env)


def daily_file(root: Path, data_type: str, day: str, symbol: str = "BTCUSDT", interval: str | None = None) -> Path:
    folder = root / "data/futures/um/daily" / data_type / symbol
    name = f"{symbol}-{interval or data_type}-{day}.zip"
    return (folder / interval / name) if interval else folder / name


def read_zip_lines(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.read(archive.namelist()[0]).decode().splitlines()


def write_zip_lines(path: Path, lines: list[str], checksum: bool = True) -> None:
    """Rewrite a Binance zip with new CSV lines and, like Binance, a matching .CHECKSUM."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.stem + ".csv", "\n".join(lines) + "\n")
    path.write_bytes(buffer.getvalue())
    if checksum:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")


def remove(path: Path) -> None:
    path.unlink()
    path.with_name(path.name + ".CHECKSUM").unlink(missing_ok=True)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def broken_dir(demo_dir, shared_dir) -> Path:
    return made_once(shared_dir, "broken", lambda folder: inject_problems(copy_tree(demo_dir, folder / "data"))) / "data"


def inject_problems(root: Path) -> None:
    """The demo files with one of each problem a real download has injected."""
    # a missing day
    remove(daily_file(root, "metrics", "2024-09-03"))
    # a gap of one hour inside a day (rows 13:00 .. 13:55 gone)
    path = daily_file(root, "metrics", "2024-09-02")
    write_zip_lines(path, [line for line in read_zip_lines(path) if " 13:" not in line])
    # zero open interest in two rows, and an outlier: open interest 50 % up for one row
    path = daily_file(root, "metrics", "2024-09-01")
    lines = read_zip_lines(path)
    for i in (100, 101):
        fields = lines[i].split(",")
        fields[2] = "0"
        lines[i] = ",".join(fields)
    fields = lines[200].split(",")
    fields[2] = str(float(fields[2]) * 1.5)
    lines[200] = ",".join(fields)
    write_zip_lines(path, lines)
    # an outlier bar: its close 20 % up (the next bar opens where it was)
    path = daily_file(root, "klines", "2024-09-01", interval="1m")
    lines = read_zip_lines(path)
    fields = lines[300].split(",")
    fields[4] = f"{float(fields[4]) * 1.2:.1f}"
    fields[2] = fields[4]
    lines[300] = ",".join(fields)
    write_zip_lines(path, lines)
    # a duplicated row and an unparseable row in one klines file
    path = daily_file(root, "klines", "2024-09-02", interval="1m")
    lines = read_zip_lines(path)
    write_zip_lines(path, lines[:50] + [lines[49], "1725235200000,not-a-price,1,1,1,1,1,1,1,1,1,0"] + lines[50:])
    # a zip that does not match its CHECKSUM
    path = daily_file(root, "aggTrades", "2024-09-04")
    path.with_name(path.name + ".CHECKSUM").write_text("0" * 64 + f"  {path.name}\n")
    # the same klines day without a header row, as Binance's older files are
    path = daily_file(root, "klines", "2024-09-03", interval="1m")
    write_zip_lines(path, read_zip_lines(path)[1:])


@pytest.fixture(scope="session")
def broken_db(broken_dir, shared_dir) -> Path:
    return made_once(shared_dir, "broken-built", build_into(broken_dir)) / "liquidations.db"


def chromium_path() -> str | None:
    """Debian's chromium; tests that need it fail under CI when it is missing, else skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
    return path


@pytest.fixture(scope="session")
def month_db(shared_dir) -> Path:
    """The README's demo exactly: `build.py demo` with its defaults (30 days, seed 1), then a build."""
    def make(out: Path) -> None:
        with untraced():
            pipeline.demo(DemoOptions(out=out / "raw"))
        build_into(out / "raw")(out)
    return made_once(shared_dir, "month", make) / "liquidations.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, settings=()) -> tuple[subprocess.Popen, str]:
    """`build.py serve`'s own Datasette command on a free loopback port (each of `settings`, a name and a value,
    passed on as Datasette's --setting), once it answers: the process and its URL."""
    port = free_port()
    command = [*serve.serve_command(db, port), *(word for name, value in settings for word in ("--setting", name, value))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/-/versions.json", timeout=2).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"datasette did not start: {' '.join(command)}") from None
            time.sleep(0.3)


@pytest.fixture(scope="module")
def server(demo_db):
    """A real server (start_server) of the demo database, for a test module: its URL."""
    process, url = start_server(demo_db)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def no_inspect_files_left():
    """The servers the tests start write build.py's inspect file under this process's id: removed at the end, as
    `build.py serve` removes its own."""
    yield
    for path in Path(tempfile.gettempdir()).glob(f"liquidation-heatmap-{os.getpid()}-*.inspect.json"):
        path.unlink(missing_ok=True)

"""Faults during a build, for real: kill -9 at several points, two builds at once, a full disk (a file size limit,
RLIMIT_FSIZE, which fails writes as a full disk does), an unwritable folder. Each time the database built before
stays byte for byte as it was, whole (SQLite's integrity_check) and served; the next build succeeds and leaves
nothing behind."""

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_build, start_server

BUILD = [sys.executable, str(ROOT / "build.py"), "build"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def whole(db: Path) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def leftovers(folder: Path) -> list[str]:
    """What a finished build must not leave: unfinished files, scratch folders, temporary files."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".wal")) or p.name.startswith(("spill-", "stage-")))


def heatmap(db: Path) -> dict[tuple, tuple]:
    """heatmap_cells, volumes by key."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT model, symbol, ts, price_bucket, long_usd, short_usd FROM heatmap_cells").fetchall()
    return {tuple(row[:4]): tuple(row[4:]) for row in rows}


def same_heatmap(a: dict, b: dict) -> bool:
    """The same cells, the same volumes but for the last bits: DuckDB's parallel sums add in any order, so two
    builds of the same files differ there (5566624.91810062 and ...63)."""
    return a.keys() == b.keys() and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6)
                                        for key in a for x, y in zip(a[key], b[key], strict=True))


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    """A build of the demo in a folder of its own, and a real server of it: (data, db, url)."""
    db = tmp_path_factory.mktemp("faults") / "liquidations.db"
    assert run_build("--data", str(demo_dir), "--db", str(db)).returncode == 0
    process, url = start_server(db)
    yield demo_dir, db, url
    process.terminate()
    process.wait(timeout=10)


def assert_previous_whole_and_served(db: Path, before: str, url: str) -> None:
    assert sha(db) == before and whole(db)
    with urllib.request.urlopen(url + "/liquidations/coverage.json?_shape=array", timeout=30) as response:
        assert response.status == 200 and json.loads(response.read())


def kill_at(command: list[str], line_starts: str, delay_s: float) -> list[str]:
    """Run a build and kill -9 it `delay_s` after it logs a line starting (after the clock) with `line_starts`:
    its log."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log = []
    for line in process.stderr:
        log.append(line)
        if line.split("] ", 1)[-1].startswith(line_starts):
            time.sleep(delay_s)
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the build ended before '{line_starts}':\n{''.join(log)}"
    return log


KILLS = {   # where: (what the log says then, how long after, the build's arguments)
    "staging": ("checksums of", 0.3, ["--full", "--cache", "{fresh}"]),   # (staging the demo takes a second)
    "running the models": ("ran sql/models/pieces", 0, ["--full"]),
    "running the models of an incremental build": ("ran sql/lifecycle/positions", 0, []),   # DuckDB's file opened in place
    "exporting": ("exported heatmap_cells", 0, ["--full"]),
}


@pytest.mark.parametrize("where", KILLS)
def test_kill_9_leaves_the_previous_database_whole_and_served(built, where, tmp_path):
    data, db, url = built
    before, cells = sha(db), heatmap(db)
    line, delay_s, extra = KILLS[where]
    extra = [word.replace("{fresh}", str(tmp_path / "cache")) for word in extra]
    kill_at([*BUILD, "--data", str(data), "--db", str(db), *extra], line, delay_s)
    assert_previous_whole_and_served(db, before, url)
    again = run_build("--data", str(data), "--db", str(db), *extra)   # the next build: as if nothing happened
    assert again.returncode == 0, again.stderr
    assert "left by a build that was stopped" in again.stderr
    assert leftovers(db.parent) == [] and leftovers(tmp_path) == []
    assert whole(db) and same_heatmap(heatmap(db), cells)   # the same inputs, the same heatmap


def test_two_builds_at_once_do_not_meet(built):
    data, db, _ = built
    first = subprocess.Popen([*BUILD, "--data", str(data), "--db", str(db), "--full"], stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    log = [first.stderr.readline()]   # "found N files": it holds the lock
    second = run_build("--data", str(data), "--db", str(db), "--full")
    log += first.stderr.readlines()
    assert first.wait(timeout=300) == 0, "".join(log)
    assert second.returncode == 2 and f"error: another build is writing in {db.parent}" in second.stderr
    assert whole(db) and leftovers(db.parent) == []
    assert run_build("--data", str(data), "--db", str(db)).returncode == 0   # the lock went with the first


# Without coverage: its data file, written as the process ends, would hit the same limit (a traceback of its own).
UNMEASURED = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE")}


def limited(bytes_: int):
    """For preexec_fn: no file written beyond `bytes_` (writes past it fail with EFBIG, as on a full disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # (else the kernel kills the process instead)
        resource.setrlimit(resource.RLIMIT_FSIZE, (bytes_, bytes_))
    return limit


@pytest.mark.parametrize("limit_bytes", [3_000, 2_000_000, 20_000_000])   # (the build fails at different points)
def test_a_full_disk_fails_cleanly(built, limit_bytes):
    data, db, url = built
    before = sha(db)
    result = subprocess.run([*BUILD, "--data", str(data), "--db", str(db), "--full"], capture_output=True, text=True,
                            preexec_fn=limited(limit_bytes), env=UNMEASURED, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    # naming the file (SQLite says "disk I/O error" for any failed write)
    assert ("File too large" in error or "disk I/O error" in error) and str(db.with_suffix("")) in error, result.stderr
    assert "Traceback" not in result.stderr
    assert_previous_whole_and_served(db, before, url)
    assert leftovers(db.parent) == []


def test_a_full_disk_while_staging_is_not_taken_for_a_damaged_file(demo_dir, tmp_path):
    """A zip unzipped onto a full disk fails the build (naming the file); it is not quarantined, which the cache
    would remember: once there is room, the same file is staged."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from liquidation_heatmap import files, stage
        files = files.discover(Path({str(demo_dir)!r}), [], None, None)
        try:
            stage.stage_files(files, Path({str(tmp_path / 'cache')!r}), 1, 512, print)
        except stage.StageError as error:
            sys.exit(f"StageError: {{error}}")
    """)
    # (8 kB: over checksums.json's 4.5 kB, under a day of klines unzipped)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=limited(8_000), env=UNMEASURED,
                            timeout=300, check=False)
    assert result.returncode == 1 and result.stderr.startswith("StageError: ") and "File too large" in result.stderr, \
        result.stdout[-1000:] + result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json") if p.name != "checksums.json"]
    assert all(record["status"] != "quarantined" for record in records), records
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(demo_dir), "--db", str(db), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 0 and "quarantined" not in result.stderr, result.stderr


def test_an_unwritable_folder_fails_before_anything_is_read(built, tmp_path):
    data, _, _ = built
    (tmp_path / "a-file").write_text("")
    for args in (["--db", str(tmp_path / "a-file" / "liquidations.db")],
                 ["--db", str(tmp_path / "ok" / "liquidations.db"), "--cache", str(tmp_path / "a-file" / "cache")]):
        result = run_build("--data", str(data), *args)
        assert result.returncode == 2 and "error: cannot write in " in result.stderr and "a-file" in result.stderr
        assert "found" not in result.stderr   # (before discovery)
    if os.geteuid() != 0:   # (root writes anywhere: a folder's mode does not stop it)
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        result = run_build("--data", str(data), "--db", str(locked / "liquidations.db"))
        assert result.returncode == 2 and f"error: cannot write in {locked}: Permission denied" in result.stderr
    shutil.rmtree(tmp_path / "ok", ignore_errors=True)

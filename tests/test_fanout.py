"""build --symbols: a build per symbol as tasks of a real Dask cluster on loopback (two workers), three small
simulated symbols of which one has damaged files; the symbols' databases merged and served as one; fetch --symbols.

Without the extra `cluster` (distributed) the cluster's tests skip, but under CI, which installs it with the test
extra, they fail."""

import http.server
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import ROOT, run_build, simulated, start_server

import build
from liquidation_heatmap import fanout
from liquidation_heatmap.options import BuildOptions
from liquidation_heatmap.pipeline import memory_limit_mb

START = "2024-09-01"
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
BUILT, DAMAGED = SYMBOLS[:2], SYMBOLS[2]
MEMORY_LIMIT = "1GB"   # shared by the two workers' builds


def need_cluster():
    try:
        import distributed  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("distributed is not installed: the test extra installs it (pip install -e '.[test]')")
        pytest.skip("the extra 'cluster' (distributed) is not installed")


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    """Two days of three symbols in one folder; every zip of the damaged one cut to half (a download cut short)."""
    root = tmp_path_factory.mktemp("symbols")
    for seed, symbol in enumerate(SYMBOLS):
        simulated(root, days=2, seed=41 + seed, symbol=symbol, start=START, trades_per_day=1500)
    for path in root.rglob(f"{DAMAGED}-*.zip"):
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return root


@pytest.fixture(scope="module")
def fanned(market, tmp_path_factory):
    """`build --symbols all` on a local cluster of two workers: its output folder and the finished process."""
    need_cluster()
    out = tmp_path_factory.mktemp("fanout")
    result = run_build("--symbols", "all", "--data", str(market), "--db", str(out / "liquidations.db"),
                       "--workers", "2", "--memory-limit", MEMORY_LIMIT)
    return out, result


def test_each_symbol_is_a_task_of_the_local_cluster_and_a_damaged_one_fails_alone(fanned):
    out, result = fanned
    err = result.stderr
    assert result.returncode == 2, err
    assert "3 symbols on a local Dask cluster of 2 workers on 127.0.0.1" in err
    assert f"error: 1 of 3 symbols failed: {DAMAGED}" in err   # named at the end, the others kept
    report = json.loads((out / "symbols" / "fanout.json").read_text())
    tasks = {task["symbol"]: task for task in report["symbols"]}
    assert sorted(tasks) == list(SYMBOLS) and report["merged"] == list(BUILT)
    for symbol in BUILT:
        assert tasks[symbol]["ok"] and f"{symbol}: built in" in err
        assert (out / "symbols" / symbol / "liquidations.db").is_file()
    failed = tasks[DAMAGED]
    assert not failed["ok"] and failed["exit"] == 2 and "none of the 11 files" in failed["error"]
    assert f"{DAMAGED}: FAILED" in err and "left out" in err
    assert "sha256" in (out / "symbols" / DAMAGED / "build.log").read_text()   # its log says why, file by file
    # each build ran in a worker of the cluster, on loopback, and two of them at the same time
    assert all(re.fullmatch(r"tcp://127\.0\.0\.1:\d+", task["worker"]) for task in tasks.values())
    spans = sorted((task["started_at"], task["ended_at"]) for task in tasks.values())
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    # each build's DuckDB had its share of --memory-limit, and no more
    with sqlite3.connect(out / "symbols" / BUILT[0] / "liquidations.db") as con:
        limit = dict(con.execute("SELECT key, value FROM build_info").fetchall())["memory_limit"]
    with duckdb.connect() as probe:
        probe.execute(f"SET memory_limit = '{memory_limit_mb(MEMORY_LIMIT) // 2}MB'")
        assert limit == probe.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def stored_queries() -> dict[str, str]:
    queries = yaml.safe_load((ROOT / "datasette.yaml").read_text())["databases"]["liquidations"]["queries"]
    return {name: query["sql"] for name, query in queries.items()}


def rows(db: Path, sql: str, **params) -> list[tuple]:
    names = set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", sql))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(sql, {name: params.get(name, "") for name in names}).fetchall()


def test_the_merged_database_answers_each_symbol_as_its_own_does(fanned):
    out, _ = fanned
    merged = out / "liquidations.db"
    tables = yaml.safe_load((ROOT / "metadata.yml").read_text())["databases"]["liquidations"]["tables"]
    for symbol in BUILT:
        own = out / "symbols" / symbol / "liquidations.db"
        for table, meta in tables.items():   # every output table: the symbol's rows, the same
            if "symbol" in meta["columns"] and table != "query_defaults":
                sql = f"SELECT * FROM [{table}] WHERE symbol = :symbol ORDER BY 1, 2, 3, 4"
                assert rows(merged, sql, symbol=symbol) == rows(own, sql, symbol=symbol), table
        for name, sql in stored_queries().items():   # every stored query, for the symbol
            if name != "coverage":   # (its build time is the merge's)
                assert rows(merged, sql, symbol=symbol) == rows(own, sql, symbol=symbol), name
    assert rows(merged, "SELECT symbol FROM query_defaults") == [(BUILT[0],)]
    info = dict(rows(merged, "SELECT key, value FROM build_info"))
    assert info["symbols"] == ",".join(BUILT) and info["input_data"] == "simulated: build.py demo"
    assert not (out / "symbols" / DAMAGED / "liquidations.db").exists()


def test_one_datasette_serves_every_symbol(fanned):
    """A real server of the merged file answers each symbol's stored queries as a server of the symbol's own file."""
    out, _ = fanned
    dbs = [out / "liquidations.db", *(out / "symbols" / symbol / "liquidations.db" for symbol in BUILT)]
    with ThreadPoolExecutor(len(dbs)) as pool:
        servers = list(pool.map(start_server, dbs))
    try:
        def answer(url: str, query: str, symbol: str) -> list[dict]:
            with urllib.request.urlopen(f"{url}/liquidations/{query}.json?_shape=array&symbol={symbol}") as response:
                return [{k: v for k, v in row.items() if k != "built_at"} for row in json.load(response)]
        (_, merged), *own = servers
        for symbol, (_, url) in zip(BUILT, own):
            for query in stored_queries():
                assert answer(merged, query, symbol) == answer(url, query, symbol), (symbol, query)
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=10)


def test_a_running_cluster_by_its_address(market, tmp_path):
    """--scheduler: the tasks go to a cluster started apart (here a scheduler and a worker on loopback, as
    `dask scheduler` and `dask worker` start them), and its worker runs the build."""
    need_cluster()
    import distributed
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        result = run_build("--symbols", DAMAGED, "--scheduler", cluster.scheduler_address, "--data", str(market),
                           "--db", str(tmp_path / "liquidations.db"))
        workers = set(cluster.scheduler_info["workers"])
    assert result.returncode == 2 and f"1 symbols on the cluster at {cluster.scheduler_address} (1 workers)" in result.stderr
    task, = json.loads((tmp_path / "symbols" / "fanout.json").read_text())["symbols"]
    assert task["worker"] in workers and "none of the 11 files" in task["error"]


def test_without_the_extra_the_symbols_go_one_after_another(market, tmp_path):
    """With distributed hidden from the build (a package of that name that fails to import, first on the path), a
    fan-out says how to go wider, builds one after another in this process's child, and still reports the failure."""
    hidden = tmp_path / "hidden" / "distributed"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('distributed hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden.parent), str(ROOT)])}
    result = subprocess.run([sys.executable, str(ROOT / "build.py"), "build", "--symbols", DAMAGED, "--data",
                             str(market), "--db", str(tmp_path / "out" / "liquidations.db")],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 2
    assert "1 symbols, one after another" in result.stderr
    assert "Dask is not installed: pip install -e '.[cluster]' builds them at once" in result.stderr
    assert f"error: 1 of 1 symbols failed: {DAMAGED}" in result.stderr


def test_symbol_lists(tmp_path, market):
    listed = tmp_path / "symbols.txt"
    listed.write_text("# the majors\nbtcusdt\n\nETHUSDT  # and ether\nbtcusdt\n")
    assert fanout.symbol_list(f"@{listed}", list) == ["BTCUSDT", "ETHUSDT"]
    assert fanout.symbol_list("solusdt, BTCUSDT,", list) == ["SOLUSDT", "BTCUSDT"]
    assert fanout.symbol_list("all", lambda: fanout.symbols_with_files(BuildOptions(data=market))) == list(SYMBOLS)
    for spec, message in (("BTC-USDT", "'BTC-USDT' is no Binance symbol"), (",", "no symbol in it"),
                          (f"@{tmp_path / 'none.txt'}", "cannot read")):
        with pytest.raises(fanout.BuildError, match=message):
            fanout.symbol_list(spec, list)


def test_symbol_and_symbols_together_are_refused(market, tmp_path, capsys):
    assert build.main(["build", "--symbol", "AAAUSDT", "--symbols", "all", "--data", str(market),
                       "--db", str(tmp_path / "x.db")]) == 2
    assert "give --symbol or --symbols, not both" in capsys.readouterr().err
    # a bad option fails once, before any task
    assert build.main(["build", "--symbols", "all", "--param", "nonsense", "--data", str(market),
                       "--db", str(tmp_path / "x.db")]) == 2
    assert "--param nonsense: expected NAME=NUMBER" in capsys.readouterr().err and not (tmp_path / "symbols").exists()


class Binance(http.server.ThreadingHTTPServer):
    """Loopback Binance: exchangeInfo (two symbols trading, the third settling) and the files under root."""
    daemon_threads = True

    def __init__(self, root: Path):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/fapi/v1/exchangeInfo"):
                    body = json.dumps({"symbols": [
                        {"symbol": s, "contractType": "PERPETUAL", "status": "SETTLING" if s == DAMAGED else "TRADING"}
                        for s in SYMBOLS] + [{"symbol": "AAAUSDT_250328", "contractType": "CURRENT_QUARTER",
                                              "status": "TRADING"}]}).encode()
                else:
                    file = root / self.path.lstrip("/")
                    if not file.is_file():
                        return self.send_error(404)
                    body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)


def test_fetch_takes_the_same_lists_and_all_is_what_binance_trades(market, tmp_path, capsys):
    server = Binance(market)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        def fetch(spec: str, out: Path) -> list[str]:
            assert build.main(["fetch", "--symbols", spec, "--types", "metrics", "--start", START, "--end", START,
                               "--data", str(out), "--base-url", url, "--rest-url", url]) == 0
            return sorted(p.name for p in out.rglob("*.zip"))
        assert fetch("all", tmp_path / "all") == [f"{s}-metrics-{START}.zip" for s in BUILT]
        assert "--symbols all: 2 perpetual symbols trading" in capsys.readouterr().err
        listed = tmp_path / "list.txt"
        listed.write_text("bbbusdt\n")
        assert fetch(f"@{listed}", tmp_path / "listed") == [f"BBBUSDT-metrics-{START}.zip"]
    finally:
        server.shutdown()
        server.server_close()
    assert build.main(["fetch", "--start", START, "--end", START, "--data", str(tmp_path)]) == 2
    assert "fetch needs --symbol SYMBOL (repeatable) or --symbols" in capsys.readouterr().err

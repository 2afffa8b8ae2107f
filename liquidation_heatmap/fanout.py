"""`build --symbols`: many symbols, one build each, as tasks of Dask (the optional extra `cluster`).

Builds are independent per symbol (every table is keyed by symbol and no model reads another symbol's rows), so a
list of symbols is a list of ordinary one-symbol builds: each writes DB_FOLDER/symbols/SYMBOL/liquidations.db (and
its cache beside it), in a process of its own (`python -m liquidation_heatmap build --symbol SYMBOL ...`), which
bounds its memory with DuckDB's --memory-limit and gives it all back when it ends. The tasks run on a Dask cluster:
a local one on loopback by default (--workers processes, one build at a time each), or a running one
(--scheduler ADDRESS). Without Dask installed, the symbols are built one after another, and the log says how to
go wider. A symbol whose build fails is reported (its error, its log) and the others are kept; the run then exits
2 naming it. Last, the symbols' databases are merged into --db (merge.py), which `serve` serves as one.
docs/scale.md says why Dask and what each task may use."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .files import discover, no_data_advice
from .merge import merge_databases
from .options import BuildOptions, FetchOptions
from .pipeline import check_arguments, locked, memory_limit_mb, writable
from .project import BuildError, log, shown
from .rest import RestClient

WIDER = "pip install -e '.[cluster]'"   # the extra that brings Dask (pyproject.toml)
ERROR_CHARS = 2000                      # of a failed build's log kept in its report


def symbol_list(spec: str, found: Callable[[], list[str]]) -> list[str]:
    """--symbols as symbols: 'all' (found(): every symbol with files under --data), 'A,B' or '@FILE' (one a line,
    '#' starting a comment). Upper-cased, each once, in the order given."""
    if spec.strip().lower() == "all":
        symbols = found()
    elif spec.startswith("@"):
        path = Path(spec[1:])
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise BuildError(f"--symbols {spec}: cannot read {path}: {error.strerror or error}") from None
        symbols = [line.split("#")[0].strip() for line in lines]
    else:
        symbols = spec.split(",")
    symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
    if bad := [s for s in symbols if not re.fullmatch(r"[A-Z0-9]+", s)]:
        raise BuildError(f"--symbols: {bad[0]!r} is no Binance symbol such as BTCUSDT")
    if not symbols:
        raise BuildError(f"--symbols {spec}: no symbol in it")
    return symbols


def symbols_with_files(options: BuildOptions) -> list[str]:
    """Every symbol with Binance files under --data in the --start/--end window (not the realized-liquidation
    recordings, which hold every symbol)."""
    files = discover(Path(options.data), [], options.start, options.end)
    symbols = sorted({info.symbol for info in files if info.period and info.symbol not in (None, "*")})
    if not symbols:
        raise BuildError(no_data_advice(Path(options.data)) or f"--symbols all: no Binance files under {options.data}")
    return symbols


def trading_symbols(options: FetchOptions) -> list[str]:
    """Every USD-M perpetual Binance trades now, from its exchangeInfo (`fetch --symbols all`): Binance's list, not
    the files' (a symbol delisted since, or quarterly contracts, are asked for by name)."""
    answer = RestClient(options.rest_url, options.retries, options.retry_delay).get("/fapi/v1/exchangeInfo")
    symbols = sorted(item["symbol"] for item in answer.get("symbols", [])
                     if item.get("contractType") == "PERPETUAL" and item.get("status") == "TRADING")
    log(f"--symbols all: {len(symbols)} perpetual symbols trading on {options.rest_url}")
    return symbols


def fetch_symbols(options: FetchOptions) -> list[str]:
    """`fetch --symbols`: the same lists as the build's, 'all' being Binance's."""
    return symbol_list(options.symbols, lambda: trading_symbols(options))


def symbol_db(db: Path, symbol: str) -> Path:
    """Where a symbol's own build goes: beside the merged database, in symbols/SYMBOL/."""
    return db.parent / "symbols" / symbol / db.name


def build_arguments(options: BuildOptions, symbol: str, memory_limit: str, jobs: int) -> list[str]:
    """The one-symbol `build` of a task: every option passed on, every path absolute (a worker of a running cluster
    may start elsewhere), its own cache (two builds never share one: each holds its cache's lock)."""
    def absolute(path) -> str:
        return str(Path(path).absolute())
    db = symbol_db(Path(options.db).absolute(), symbol)
    args = ["build", "--symbol", symbol, "--data", absolute(options.data), "--db", str(db),
            "--memory-limit", memory_limit, "--jobs", str(jobs)]
    if options.cache:
        args += ["--cache", absolute(Path(options.cache) / symbol)]
    for flag, value in (("--start", options.start), ("--end", options.end), ("--horizons", options.horizons)):
        args += [flag, str(value)] if value else []
    for flag, value in (("--parameters", options.parameters), ("--leverage-tiers", options.leverage_tiers),
                        ("--maintenance-brackets", options.maintenance_brackets)):
        args += [flag, absolute(value)] if value else []
    args += [word for path in options.liquidations for word in ("--liquidations", absolute(path))]
    args += [word for item in options.param for word in ("--param", item)]
    # (no stored answers: the merged database's are rendered over it, merge.py; a symbol's own would be work done twice)
    return args + (["--full"] if options.full else []) + ["--no-stored-answers"]


def build_symbol(symbol: str, args: list[str], log_path: str) -> dict:
    """One task: the symbol's build in a process of its own, its log written to log_path. Returns what the
    fan-out reports: ok, seconds, peak resident memory (bytes), the error (the log's end) if it failed. Runs on a
    worker: the Python and the package are the worker's."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    began, started_at = time.perf_counter(), time.time()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "liquidation_heatmap", *args], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=package_env())
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    text = Path(log_path).read_text(errors="replace")
    error = "" if process.returncode == 0 else (text[text.rfind("error:"):] if "error:" in text else text).strip()
    return {"symbol": symbol, "ok": process.returncode == 0, "seconds": time.perf_counter() - began,
            "peak_bytes": usage.ru_maxrss * 1024, "exit": process.returncode, "error": error[-ERROR_CHARS:],
            "log": log_path, "worker": worker_name(), "started_at": started_at, "ended_at": time.time()}


def worker_name() -> str:
    """The Dask worker running this task (its address), or 'this process' outside one."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "this process"


def package_env() -> dict:
    """The environment of a task's build: the package this worker imported comes first on the path, so that the
    build runs the same code as the worker whatever its folder (an editable install may point at another checkout)."""
    here = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}


def engine():
    """Dask's distributed, if installed (the extra `cluster`), else None."""
    try:
        import distributed
    except ImportError:
        return None
    return distributed


def reported(result: dict) -> dict:
    """A task's result, said in the log as it comes."""
    peak = f"{result['peak_bytes'] / 2**30:.2f} GiB"
    if result["ok"]:
        log(f"{result['symbol']}: built in {result['seconds']:.1f} s (peak {peak}, on {result['worker']})")
    else:
        log(f"{result['symbol']}: FAILED after {result['seconds']:.1f} s (exit {result['exit']}; its log: "
            f"{shown(Path(result['log']))}): {result['error'].splitlines()[0] if result['error'] else ''}")
    return result


def one_after_another(tasks: dict[str, tuple]) -> list[dict]:
    return [reported(build_symbol(symbol, *task)) for symbol, task in tasks.items()]


def on_cluster(distributed, client, tasks: dict[str, tuple]) -> list[dict]:
    """Every task submitted at once; each result said as it comes. A task lost with its worker (a worker killed:
    out of memory, say) is a failure of its symbol, not of the run."""
    futures = {client.submit(build_symbol, symbol, *task, key=f"build-{symbol}", pure=False, retries=0): symbol
               for symbol, task in tasks.items()}
    results = []
    for future in distributed.as_completed(futures):
        symbol = futures[future]
        try:
            results.append(reported(future.result()))
        # the task never returned: its worker died (KilledWorker), the cluster cancelled it or lost touch (OSError),
        # or the worker could not start the build (OSError: no such folder there)
        except (distributed.KilledWorker, concurrent.futures.CancelledError, OSError) as error:
            results.append(reported({"symbol": symbol, "ok": False, "seconds": 0.0, "peak_bytes": 0, "exit": None,
                                     "error": f"error: the task was lost: {type(error).__name__}: {error}",
                                     "log": tasks[symbol][1], "worker": "?", "started_at": None, "ended_at": None}))
    return results


def run_tasks(options: BuildOptions, symbols: list[str]) -> list[dict]:
    """Each symbol's build, on the cluster asked for, or one after another."""
    distributed = engine()
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(symbols)))
    if options.scheduler and not distributed:
        raise BuildError(f"--scheduler {options.scheduler}: Dask is not installed here: {WIDER}")
    total_mb = memory_limit_mb(options.memory_limit)
    # a local cluster's builds share --memory-limit; on a running cluster each has it whole (its worker's machine)
    share_mb = total_mb if options.scheduler else max(64, total_mb // workers)
    jobs = options.jobs if options.scheduler else max(1, options.jobs // workers)
    tasks = {s: (build_arguments(options, s, f"{share_mb}MB", jobs),
                 str(symbol_db(Path(options.db).absolute(), s).with_name("build.log"))) for s in symbols}
    if options.scheduler:
        with distributed.Client(options.scheduler, timeout="30s") as client:
            log(f"{len(symbols)} symbols on the cluster at {options.scheduler} "
                f"({len(client.scheduler_info()['workers'])} workers), DuckDB's memory {share_mb} MB a build")
            return on_cluster(distributed, client, tasks)
    if workers == 1 or not distributed:
        log(f"{len(symbols)} symbols, one after another, DuckDB's memory {share_mb} MB a build"
            + ("" if distributed else f" (Dask is not installed: {WIDER} builds them at once on a local cluster)"))
        return one_after_another(tasks)
    log(f"{len(symbols)} symbols on a local Dask cluster of {workers} workers on 127.0.0.1, one build at a time "
        f"each, DuckDB's memory {share_mb} MB a build ({options.memory_limit} shared)")
    # processes, not threads: a worker's own memory is watched apart (the builds are processes of their own anyway)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  memory_limit=f"{share_mb}MB", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        return on_cluster(distributed, client, tasks)


def fan_out(options: BuildOptions) -> Path:
    """`build --symbols`: every symbol built, the builds merged into --db; a BuildError naming the failed ones."""
    if options.symbol:
        raise BuildError("give --symbol or --symbols, not both")
    if options.workers is not None and options.workers < 1:
        raise BuildError(f"--workers {options.workers}: at least one")
    symbols = symbol_list(options.symbols, lambda: symbols_with_files(options))
    # a bad option fails here, once, not in every task after the cluster has started
    check_arguments(dataclasses.replace(options, symbols=None, symbol=symbols))
    db = Path(options.db)
    began = time.perf_counter()
    with locked([writable(db.parent)]):   # (a second fan-out, or a plain build, into the same --db fails at once)
        results = sorted(run_tasks(dataclasses.replace(options, symbols=None), symbols), key=lambda r: r["symbol"])
        failed = [r for r in results if not r["ok"]]
        # a failed symbol's previous build, if any, is merged: as a failed build leaves the database it had
        kept = {r["symbol"]: symbol_db(db, r["symbol"]) for r in results if symbol_db(db, r["symbol"]).exists()}
        for r in failed:
            log(f"{r['symbol']}: " + ("its previous build is merged" if r["symbol"] in kept else "left out"))
        if kept:
            merge_databases(kept, db)
        # every task's result, for whoever runs the fan-out from a script (or reads why a symbol failed)
        report = db.parent / "symbols" / "fanout.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"symbols": results, "merged": sorted(kept), "db": str(db)}, indent=1))
    log(f"{len(results) - len(failed)} of {len(results)} symbols built in {time.perf_counter() - began:.1f} s"
        + (f"; merged into {shown(db)}" if kept else ""))
    if failed:
        raise BuildError(f"{len(failed)} of {len(results)} symbols failed: "
                         + "; ".join(f"{r['symbol']} ({shown(Path(r['log']))})" for r in failed))
    return db

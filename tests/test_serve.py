"""Datasette on the built SQLite file: in process, with `datasette --get`, and as a real server."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml
from conftest import ROOT, run_build
from datasette.app import Datasette

import build


def tables() -> list[str]:
    return list(build.output_tables(build.load_metadata()))


def queries() -> list[str]:
    return list(yaml.safe_load((ROOT / "datasette.yaml").read_text())["databases"]["liquidations"]["queries"])


@pytest.fixture
def datasette(demo_db):
    return Datasette(
        immutables=[str(demo_db)], metadata=build.load_metadata(),
        config=yaml.safe_load((ROOT / "datasette.yaml").read_text()), template_dir=str(ROOT / "templates"))


def test_every_table_and_query_answers_with_datasette_get(demo_db):
    command = build.serve_command(demo_db, 8001)
    for path in ["/", "/liquidations", "/assets/plotly.min.js"] + [f"/liquidations/{t}" for t in tables() + queries()]:
        result = subprocess.run([*command, "--get", path], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"{path}: {result.stderr[-500:]}"
    result = subprocess.run([*command, "--get", "/liquidations/no_such_table"], capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 1


async def test_metadata_is_shown(datasette):
    page = (await datasette.client.get("/")).text
    assert "Liquidation Heatmap" in page and "estimate" in page
    table = (await datasette.client.get("/liquidations/data_quality")).text
    assert "One row per problem found in the input files" in table
    assert "Binance public data" in table  # source shown


async def test_health_query(datasette):
    response = await datasette.client.get("/liquidations/health.json?_shape=array")
    assert response.status_code == 200
    rows = response.json()
    assert {r["data_type"] for r in rows} == {"metrics", "fundingRate", "klines", "markPriceKlines", "aggTrades",
                                              "liquidationSnapshot"}
    assert all(r["built_at"].endswith("Z") for r in rows)
    only = (await datasette.client.get("/liquidations/health.json?_shape=array&symbol=ETHUSDT")).json()
    assert only == []


async def test_problems_query_filters(datasette, broken_db):
    ds = Datasette(immutables=[str(broken_db)], metadata=build.load_metadata(),
                   config=yaml.safe_load((ROOT / "datasette.yaml").read_text()))
    everything = (await ds.client.get("/liquidations/problems.json?_shape=array")).json()
    errors = (await ds.client.get("/liquidations/problems.json?_shape=array&severity=error")).json()
    assert {r["problem"] for r in errors} == {"checksum_mismatch", "unparseable_rows"}
    assert len(everything) > len(errors) and everything[0]["severity"] == "error"
    gaps = (await ds.client.get("/liquidations/problems.json?_shape=array&problem=gap&symbol=BTCUSDT")).json()
    assert gaps and all(r["problem"] == "gap" for r in gaps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_a_real_server(demo_db):
    port = free_port()
    server = subprocess.Popen([*build.serve_command(demo_db, port)[:1], str(ROOT / "build.py"), "serve",
                               "--db", str(demo_db), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/liquidations/health.json?_shape=array") as r:
                    rows = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.3)
        assert any(r["data_type"] == "metrics" for r in rows)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/plotly.min.js") as r:
            assert b"plotly.js" in r.read(300)  # served from the installed plotly package, not a CDN
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_without_a_database_says_what_to_do(tmp_path):
    result = run_build("--db", str(tmp_path / "none.db"), command="serve")
    assert result.returncode == 2 and "python build.py build" in result.stderr

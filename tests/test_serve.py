"""Datasette on the built SQLite file: in process, with `datasette --get`, and as a real server."""

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port, run_build
from datasette.app import Datasette
from datasette.plugins import pm

from liquidation_heatmap import answers, cli, export, serve

CHART_PAGES = ["/heatmap", "/liquidation_map", "/compare_models", "/backtest"]   # templates/pages/


def tables() -> list[str]:
    return list(export.output_tables(export.load_metadata()))


def queries() -> list[str]:
    return list(yaml.safe_load((ROOT / "datasette.yaml").read_text())["databases"]["liquidations"]["queries"])


def in_process(db) -> Datasette:
    """The same Datasette `build.py serve` runs, in process: metadata, config, templates, plugins."""
    return Datasette(
        immutables=[str(db)], metadata=export.load_metadata(), config=yaml.safe_load((ROOT / "datasette.yaml").read_text()),
        template_dir=str(ROOT / "templates"), plugins_dir=str(ROOT / "plugins"))


@pytest.fixture
def datasette(demo_db):
    return in_process(demo_db)


async def rows(ds, path: str) -> list[dict]:
    response = await ds.client.get(path + ("&" if "?" in path else "?") + "_shape=array")
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_every_table_and_query_answers_on_a_real_server(server, demo_db):
    """`build.py serve`'s own server (conftest.server) answers every page, table and stored query, each with a
    200, and a table that does not exist with a 404; `datasette --get` with serve's command agrees on two."""
    paths = ["/", "/liquidations", *CHART_PAGES] + [f"/liquidations/{t}" for t in tables() + queries()]
    for path in paths:
        with urllib.request.urlopen(server + path, timeout=60) as response:
            assert response.status == 200, path
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server + "/liquidations/no_such_table", timeout=60)
    assert missing.value.code == 404
    command = serve.serve_command(demo_db, 8001)   # (one process each: two are enough to show it)
    assert subprocess.run([*command, "--get", "/liquidations/heatmap"], capture_output=True, timeout=120,
                          check=False).returncode == 0
    assert subprocess.run([*command, "--get", "/liquidations/no_such_table"], capture_output=True, timeout=120,
                          check=False).returncode == 1


async def test_metadata_is_shown(datasette):
    page = (await datasette.client.get("/")).text
    assert "Liquidation Heatmap" in page and "estimate" in page
    table = (await datasette.client.get("/liquidations/data_quality_problems")).text
    assert "One row per problem found in the input files" in table
    assert "Binance public data" in table  # source shown


async def test_coverage_query(datasette):
    found = await rows(datasette, "/liquidations/coverage.json")
    assert {r["data_type"] for r in found} == {"metrics", "fundingRate", "klines", "markPriceKlines", "aggTrades",
                                               "liquidationSnapshot"}
    assert all(r["built_at"].endswith("Z") and "duckdb" in r["versions"] for r in found)
    assert await rows(datasette, "/liquidations/coverage.json?symbol=BTCUSDT") == found


async def test_data_quality_query_filters(broken_db):
    ds = in_process(broken_db)
    everything = await rows(ds, "/liquidations/data_quality.json")
    errors = await rows(ds, "/liquidations/data_quality.json?severity=error")
    assert {r["problem"] for r in errors} == {"checksum_mismatch", "unparseable_rows"}
    assert len(everything) > len(errors) and everything[0]["severity"] == "error"
    gaps = await rows(ds, "/liquidations/data_quality.json?problem=gap&symbol=BTCUSDT")
    assert gaps and all(r["problem"] == "gap" for r in gaps)


async def test_heatmap_query_reads_the_rows_the_table_adds_up_to(datasette, demo_db):
    base = await rows(datasette, "/liquidations/heatmap.json?model=binance_standard&bucket_usd=100&time_bucket_s=3600")
    with sqlite3.connect(demo_db) as con:
        expected = con.execute("SELECT ts, price_bucket, long_usd, short_usd FROM heatmap_cells "
                               "WHERE model = 'binance_standard'").fetchall()
    assert [r["ts"] for r in base] == sorted({ts for ts, *_ in expected})  # one row per time, none cut off
    by_time = {r["ts"]: r for r in base}
    seen = 0
    for ts, bucket, long_usd, short_usd in expected:
        row = by_time[ts]
        i = round((bucket - row["price_bucket_first"]) / 100)
        values = json.loads(row["alive_kusd"])
        if 0 <= i < len(values):   # in the row's window: the price's range in its hour, widened by 25 %
            assert values[i] == round((long_usd + short_usd) / 1000), (ts, bucket)
            seen += 1
        else:
            assert not (row["price_low"] * 0.75 <= bucket + 100 and bucket <= row["price_high"] * 1.25)
    # (out of it: mostly the 2x levels, 50 % away, and the warm start's tails, drawn as a density since issue 29: 52 %
    # of the cells are in the window on the 4-day demo)
    assert seen > 0.45 * len(expected)
    totals = {}
    for ts, _, long_usd, short_usd in expected:
        totals[ts] = (totals.get(ts, (0, 0))[0] + long_usd, totals.get(ts, (0, 0))[1] + short_usd)
    assert all((r["long_usd_total"], r["short_usd_total"]) == tuple(map(round, totals[r["ts"]])) for r in base)
    assert all(r["price_low"] <= min(r["price_open"], r["price_close"]) <= r["price_high"] for r in base)
    # a coarser price bucket sums ten base buckets; a day holds the mean of its hours
    coarse = await rows(datasette, "/liquidations/heatmap.json?model=binance_standard&bucket_usd=1000&time_bucket_s=3600")
    assert coarse[5]["price_bucket_usd"] == 1000 and sum(json.loads(coarse[5]["alive_kusd"])) == pytest.approx(
        sum(json.loads(base[5]["alive_kusd"])), rel=0.05)
    daily = await rows(datasette, "/liquidations/heatmap.json?model=binance_standard&bucket_usd=100&time_bucket_s=86400"
                                  "&start=2024-09-02&end=2024-09-02")
    hours = [r for r in base if r["ts"].startswith("2024-09-02")]
    assert len(daily) == 1 and len(hours) == 24
    assert daily[0]["long_usd_total"] == pytest.approx(sum(r["long_usd_total"] for r in hours) / 24, abs=1)
    assert daily[0]["price_high"] == max(r["price_high"] for r in hours)
    assert (daily[0]["price_open"], daily[0]["price_close"]) == (hours[0]["price_open"], hours[-1]["price_close"])
    # the presets: the last 24 hours up to the latest time
    day = await rows(datasette, "/liquidations/heatmap.json?model=binance_standard&last=24h&bucket_usd=100&time_bucket_s=3600")
    assert [r["ts"] for r in day] == [r["ts"] for r in base][-24:]


async def test_heatmap_resolution_fits_one_screen(month_db):
    """The README's 30-day demo: left to choose, the heatmap query sends the finest resolution within 60,000 cells."""
    ds = in_process(month_db)
    chosen = {}
    for last in ["", "12h", "3d", "7d", "30d"]:
        response = await ds.client.get(f"/liquidations/heatmap.json?_shape=array&last={last}")
        found = response.json()
        cells = sum(len(json.loads(r["alive_kusd"])) for r in found)
        assert response.status_code == 200 and 0 < cells <= 60_000 and len(response.content) < 600_000
        chosen[last] = (found[0]["time_bucket_s"], found[0]["price_bucket_usd"], len(found))
        if last == "":   # the README: "54,709 cells, 531 KB of JSON before gzip"
            assert cells == 54_709 and round(len(response.content), -3) == 531_000, (cells, len(response.content))
    assert chosen["12h"] == (3600, 100, 12) and chosen["3d"] == (3600, 100, 72)   # the finest there is
    # the README's figures: the whole range at 1 hour x 500 USDT, 7 days at 1 hour x 200 USDT
    assert chosen[""] == chosen["30d"] == (3600, 500, 720) and chosen["7d"] == (3600, 200, 168)
    finer = await ds.client.get("/liquidations/heatmap.json?_shape=array&bucket_usd=100&time_bucket_s=3600")
    assert len(finer.json()) == 30 * 24   # asked for, the base resolution comes whole


async def test_levels_and_compare_queries(datasette):
    # a row per side and tier, its volume per price bucket as an object (?_json= parses it)
    latest = await rows(datasette, "/liquidations/levels.json?model=binance_standard&side=long&leverage=10"
                                   "&_json=volume_by_price_usd")
    assert [(r["side"], r["leverage"]) for r in latest] == [("long", 10)]
    assert all(float(p) < latest[0]["current_price"] for p in latest[0]["volume_by_price_usd"])  # longs below the price
    earlier = await rows(datasette, "/liquidations/levels.json?model=binance_standard&at=2024-09-02T06:30"
                                    "&_json=volume_by_price_usd")
    assert earlier[0]["as_of"] == "2024-09-02T06:00:00Z" and {r["leverage"] for r in earlier} >= {10, 20, 50}
    # longs below the price, shorts above (a level's bucket may hold the price: one bucket of slack)
    assert all(float(p) < r["current_price"] if r["side"] == "long" else float(p) + r["price_bucket_usd"] > r["current_price"]
               for r in earlier for p in r["volume_by_price_usd"])
    the_map = await rows(datasette, "/liquidations/levels.json?model=funding_adjusted&_json=volume_by_price_usd")
    assert all(sum(r["volume_by_price_usd"].values()) == pytest.approx(r["alive_volume_usd"], abs=1) for r in the_map)
    assert {(r["side"], r["leverage"]) for r in the_map} == {(s, lev) for s in ("long", "short")
                                                                 for lev in (2, 5, 10, 20, 50, 100, 125)}
    plain = await rows(datasette, "/liquidations/levels.json?model=funding_adjusted")   # without _json: JSON text
    assert [json.loads(r["volume_by_price_usd"]) for r in plain] == [r["volume_by_price_usd"] for r in the_map]
    compared = await rows(datasette, "/liquidations/compare_models.json?at=2024-09-03&_json=alive_kusd")
    assert [r["model"] for r in compared] == ["binance_standard", "churn_only", "ensemble", "funding_adjusted",
                                              "trade_flow"]
    assert all(r["as_of"] == "2024-09-03T00:00:00Z" and r["long_alive_usd"] > 0 for r in compared)
    assert all(sum(r["alive_kusd"]) > 0 for r in compared)   # an array, not a string to parse twice


MODELS = {"binance_standard", "churn_only", "funding_adjusted", "trade_flow", "ensemble", "forecast",
          "forecast_without_levels"}
METRICS = {"volume_pearson", "volume_spearman", "location_gain_bits", "precision", "calibration"}


@pytest.fixture
def baselines(demo_db) -> set[str]:
    """The position-free baselines the build scored (every predictor that is not a model)."""
    with sqlite3.connect(demo_db) as con:
        found = {m for (m,) in con.execute("SELECT DISTINCT model FROM backtest_scores")} - MODELS
    assert found >= {"naive_move", "breakout", "nearest_buckets", "shuffled", "baseline_blend"}
    return found


async def test_predicted_vs_realized_query_per_horizon(datasette, demo_db, baselines):
    arrays = "&_json=ts&_json=predicted_usd&_json=realized_usd"   # (Datasette's _json: arrays, not strings)
    found = await rows(datasette, "/liquidations/predicted_vs_realized.json?model=binance_standard" + arrays)
    with sqlite3.connect(demo_db) as con:
        expected = {side: con.execute("SELECT ts, round(predicted_usd), round(realized_usd) FROM backtest_series WHERE "
                                      "model = 'binance_standard' AND horizon = '1h' AND side = ? ORDER BY ts", [side]).fetchall()
                    for side in ("long", "short")}
    assert {r["horizon"] for r in found} == {"1h"}  # the default
    assert [r["side"] for r in found] == ["long", "short"] and len(expected["long"]) >= 48
    for r in found:   # a row per side: every window, in time order
        assert list(zip(r["ts"], r["predicted_usd"], r["realized_usd"])) == expected[r["side"]]
        assert r["windows"] == len(r["ts"]) and r["realized_total_usd"] == sum(r["realized_usd"])
    four = await rows(datasette, "/liquidations/predicted_vs_realized.json?model=binance_standard&horizon=4h" + arrays)
    assert {r["horizon"] for r in four} == {"4h"} and all(int(ts[11:13]) % 4 == 0 for r in four for ts in r["ts"])
    assert four[0]["windows"] < found[0]["windows"] / 3
    assert {r["model"] for r in await rows(datasette, "/liquidations/predicted_vs_realized.json")} == {"forecast"}
    everyone = await rows(datasette, "/liquidations/predicted_vs_realized.json?horizon=24h&model=all")
    assert {r["model"] for r in everyone} == MODELS | baselines
    both = await rows(datasette, "/liquidations/predicted_vs_realized.json?horizon=24h&model=all&side=both" + arrays)
    assert {r["side"] for r in both} == {"both"} and 2 * len(both) == len(everyone)
    assert sum(r["realized_total_usd"] for r in both) == pytest.approx(sum(r["realized_total_usd"] for r in everyone), rel=1e-6)
    window = await rows(datasette, f"/liquidations/predicted_vs_realized.json?start={found[0]['ts'][5]}"
                                   f"&end={found[0]['ts'][9]}&model=binance_standard" + arrays)
    assert [r["ts"] for r in window] == [found[0]["ts"][5:10]] * 2


async def test_backtest_query(datasette, baselines):
    scores = await rows(datasette, "/liquidations/backtest.json")
    assert {r["model"] for r in scores} == MODELS | baselines
    assert {r["metric"] for r in scores} == METRICS
    assert list(dict.fromkeys(r["horizon"] for r in scores)) == ["1h", "4h", "24h"]  # shortest first
    assert all(r["fitted_on"] for r in scores)
    # a score rests on windows, and says which; one that could not be computed (nothing to scale) is empty
    assert all(r["n_periods"] > 0 and r["scored_from"] <= r["scored_to"] for r in scores if r["value"] is not None)
    assert {r["fitted_on"] for r in scores if r["model"] in MODELS and r["metric"].startswith("volume_")} == {
        "nothing fitted to realized data", "regression on the windows that ended before each day (expanding, refitted daily)"}
    one = await rows(datasette, "/liquidations/backtest.json?model=shuffled&horizon=4h&symbol=BTCUSDT")
    assert one and {(r["model"], r["horizon"]) for r in one} == {("shuffled", "4h")}


async def test_backtest_verdicts_query_sets_each_model_beside_the_best_baseline(datasette, baselines):
    verdicts = await rows(datasette, "/liquidations/backtest_verdicts.json")
    scores = await rows(datasette, "/liquidations/backtest.json")
    assert {r["model"] for r in verdicts} == MODELS
    assert {r["metric"] for r in verdicts} == METRICS - {"calibration"}  # no "better" direction
    assert list(dict.fromkeys(r["horizon"] for r in verdicts)) == ["1h", "4h", "24h"]
    assert list(dict.fromkeys(r["metric"] for r in verdicts))[:2] == ["volume_pearson", "volume_spearman"]
    for v in verdicts:
        same = [s for s in scores if (s["side"], s["horizon"], s["metric"]) == (v["side"], v["horizon"], v["metric"])
                and s["value"] is not None]
        best = max(s["value"] for s in same if s["model"] in baselines)
        assert v["baseline_value"] == pytest.approx(best, abs=1e-4)
        assert v["best_baseline"] in {s["model"] for s in same if s["model"] in baselines and s["value"] == best}
        assert v["value"] == pytest.approx(next(s["value"] for s in same if s["model"] == v["model"]), abs=1e-4)
        assert v["skill"] == pytest.approx(v["value"] - v["baseline_value"], abs=2e-4)
        # "beats" only where the skill's 90 % interval lies above 0, "worse" where it lies below
        words = ("beats" if v["skill_low"] is not None and v["skill_low"] > 0 else
                 "worse than" if v["skill_high"] is not None and v["skill_high"] < 0 else "no better than")
        assert v["verdict"].startswith(f"{words} {v['best_baseline']}"), v
    some = await rows(datasette, "/liquidations/backtest_verdicts.json?horizon=24h&model=trade_flow")
    assert some and {(r["model"], r["horizon"]) for r in some} == {("trade_flow", "24h")}


@pytest.mark.parametrize(("path", "message"), [
    ("heatmap.json?model=best",  # no baselines: they have no heatmap
     "model='best' is not valid; expected one of binance_standard, churn_only, ensemble, funding_adjusted, trade_flow"),
    ("heatmap.json?start=last+week", "start='last week' is not valid; expected an ISO-8601"),
    ("heatmap.json?start=2024-13-45", "start='2024-13-45' is not valid; expected an ISO-8601 UTC date or time that exists"),
    ("heatmap.json?end=2024-02-30", "end='2024-02-30' is not valid"),   # (the pattern matches: a real parser says no)
    ("levels.json?at=2024-09-20T25:00", "at='2024-09-20T25:00' is not valid"),
    ("levels.json?at=2024-09-20T12:61Z", "at='2024-09-20T12:61Z' is not valid"),
    ("heatmap.json?bucket_usd=130", "bucket_usd='130' is not valid; expected one of 100, 200, 500, 1000"),
    ("heatmap.json?time_bucket_s=60", "time_bucket_s='60' is not valid; expected one of 3600, 14400, 86400"),
    ("heatmap.json?last=2w", "last='2w' is not valid; expected one of 12h, 24h, 3d, 7d, 30d"),
    ("levels.json?side=up", "side='up' is not valid; expected one of long, short"),
    ("levels.json?leverage=7", "leverage='7' is not valid; expected one of 2, 5, 10, 20, 50, 100, 125"),
    ("levels.json?symbol=DOGEUSDT", "symbol='DOGEUSDT' is not valid; expected one of BTCUSDT"),
    ("compare_models.json?at=tomorrow", "at='tomorrow' is not valid"),
    ("data_quality.json?severity=bad", "severity='bad' is not valid; expected one of error, info, warning"),
    ("backtest.json?model=oracle", "model='oracle' is not valid; expected one of baseline_blend, binance_standard"),
    ("backtest_verdicts.json?model=shuffled",  # models only
     ("model='shuffled' is not valid; expected one of binance_standard, churn_only, ensemble, forecast, "
      "forecast_without_levels, funding_adjusted, trade_flow")),
    ("predicted_vs_realized.json?model=x", "model='x' is not valid; expected one of all, baseline_blend, binance_standard"),
    ("backtest.json?horizon=2h", "backtest: horizon='2h' is not valid; expected one of 1h, 4h, 24h"),
    ("backtest_verdicts.json?horizon=1d", "backtest_verdicts: horizon='1d' is not valid; expected one of 1h, 4h, 24h"),
    ("predicted_vs_realized.json?horizon=soon", "horizon='soon' is not valid; expected one of 1h, 4h, 24h"),
])
async def test_bad_parameters_get_a_clear_400(datasette, path, message):
    response = await datasette.client.get(f"/liquidations/{path}")
    assert response.status_code == 400
    assert message in response.json()["error"]
    page = await datasette.client.get("/liquidations/" + path.replace(".json", ""))
    assert page.status_code == 400 and "is not valid" in page.text
    table = await datasette.client.get("/liquidations/" + path.replace(".json", ".csv"))   # in the format asked for
    assert table.status_code == 400 and table.headers["content-type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(table.text))) == [{"error": response.json()["error"], "status": "400"}]


async def test_a_problem_kind_the_build_did_not_find_is_an_empty_list_not_a_400(datasette, demo_db):
    with (ROOT / "sql" / "seeds" / "data_quality_problems.csv").open() as f:
        kinds = {row["problem"] for row in csv.DictReader(f)}   # the one list (tests/test_docs.py: documented)
    rule = yaml.safe_load((ROOT / "datasette.yaml").read_text())["plugins"]["liquidation_params"]["problem"]
    with sqlite3.connect(demo_db) as con:
        assert {kind for (kind,) in con.execute(rule)} == kinds   # the 400 rule reads it from the build
    found = {r["problem"] for r in await rows(datasette, "/liquidations/data_quality.json")}
    assert found < kinds and "gap" not in found
    assert (await datasette.client.get("/liquidations/data_quality.json?problem=no_such_kind")).status_code == 400
    assert await rows(datasette, "/liquidations/data_quality.json?problem=gap") == []


@pytest.mark.parametrize("query", ["levels", "compare_models"])
async def test_a_map_is_labelled_with_the_instant_its_levels_and_price_are_taken_at(datasette, demo_db, query):
    """Before: at=2024-09-02 gave the bucket 00:00-01:00 labelled 00:00 with the 00:59 close. Now as_of is the
    instant asked (a bucket's end) and the price the last trade before it: the close of the candle ending then."""
    db = sqlite3.connect(demo_db)
    for at in ("2024-09-02", "2024-09-02T05:30"):
        answer = await rows(datasette, f"/liquidations/{query}.json?at={at}")
        expected = "2024-09-02T00:00:00Z" if at == "2024-09-02" else "2024-09-02T05:00:00Z"   # the last bucket end <= at
        assert {r["as_of"] for r in answer} == {expected}
        close = db.execute("SELECT close FROM price_klines WHERE ts < ? ORDER BY ts DESC LIMIT 1", [expected]).fetchone()[0]
        assert {r["current_price"] for r in answer} == {round(close, 1) if query == "compare_models" else close}
    latest = await rows(datasette, f"/liquidations/{query}.json")
    last_candle_end = db.execute("SELECT max(ts) FROM price_klines").fetchone()[0]
    assert latest[0]["as_of"] > last_candle_end   # the latest map is as of the end of the last candle's hour


async def test_a_time_that_can_only_answer_nothing_is_a_400_that_says_the_range(datasette, demo_db):
    """Before: start after end gave 200 [], a start after the data 'no estimates' without the range, and
    at=2030-01-01 silently the latest levels. The covered range comes from the built file itself."""
    db = sqlite3.connect(demo_db)
    first, last = db.execute("SELECT min(ts), max(ts) FROM models_compared").fetchone()
    bucket_s = int(db.execute("SELECT value FROM model_parameters WHERE name = 'time_bucket_s'").fetchone()[0])
    shift = lambda ts, s: (dt.datetime.fromisoformat(ts[:19]) + dt.timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M")
    as_of = f"covers {shift(first, bucket_s)} to {shift(last, bucket_s)} UTC"   # the map is taken at a bucket's end
    for path, message in [
        ("heatmap.json?start=2024-09-03&end=2024-09-02", "heatmap: start='2024-09-03' is after end='2024-09-02'"),
        ("heatmap.json?start=2030-01-01", f"start='2030-01-01' is outside the data: this build covers {shift(first, 0)}"),
        ("heatmap.json?end=2020-01-01", "end='2020-01-01' is outside the data"),
        ("levels.json?at=2030-01-01", f"levels: at='2030-01-01' is outside the data: this build {as_of}"),
        ("levels.json?at=2024-09-01T00:30", f"at='2024-09-01T00:30' is outside the data: this build {as_of}"),
        ("compare_models.json?at=2030-01-01", as_of),
        ("predicted_vs_realized.json?start=2030-01-01", "start='2030-01-01' is outside the data"),
    ]:
        response = await datasette.client.get(f"/liquidations/{path}")
        assert response.status_code == 400 and message in response.json()["error"], (path, response.text[:300])
    # at the edges: the first and the last instant answer
    for at in (shift(first, bucket_s), shift(last, bucket_s)):
        answer = await rows(datasette, f"/liquidations/levels.json?at={at.replace(' ', 'T')}")
        assert answer and {r["as_of"][:16].replace("T", " ") for r in answer} == {at}


async def test_an_immutable_databases_answers_are_kept_and_sent_again(demo_db, monkeypatch):
    ds, path = in_process(demo_db), "/liquidations/heatmap.json?_shape=array&last=24h"
    first, again = await ds.client.get(path), await ds.client.get(path)
    assert "x-cache" not in first.headers and again.headers["x-cache"] == "hit" and again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    fresh = await ds.client.get(path, headers={"Cache-Control": "no-cache"})   # asked afresh: the query runs
    assert "x-cache" not in fresh.headers and fresh.json() == first.json()
    assert (await ds.client.get(path)).headers["x-cache"] == "hit"   # the fresh answer replaced the kept one
    for headers in ({"Cookie": "ds_actor=x"}, {"Authorization": "Bearer x"}):   # an actor may see other things
        assert "x-cache" not in (await ds.client.get(path, headers=headers)).headers
    plain = await ds.client.get(path, headers={"Accept-Encoding": "identity"})   # (httpx asks for gzip by default)
    assert "x-cache" not in plain.headers and "content-encoding" not in plain.headers   # its own key
    bad = "/liquidations/heatmap.json?bucket_usd=130"
    assert [(await ds.client.get(bad)).status_code for _ in range(2)] == [400, 400]
    assert "x-cache" not in (await ds.client.get(bad)).headers   # only whole 200s are kept
    for page in ("/", "/heatmap?model=ensemble"):   # the index and the pages read only the immutable database
        first = await ds.client.get(page)
        assert first.status_code == 200 and (await ds.client.get(page)).headers["x-cache"] == "hit"
    assert "x-cache" not in (await ds.client.get("/-/versions.json")).headers   # (Datasette's own /-/ pages: never)
    mutable = Datasette([str(demo_db)], config=ds.config, plugins_dir=str(ROOT / "plugins"))
    for page in (path, "/"):
        await mutable.client.get(page)
        assert "x-cache" not in (await mutable.client.get(page)).headers   # its file may change: never kept
    responses = next(p for p in pm.get_plugins() if getattr(p, "__file__", "").endswith("plugins/ready_answers.py"))
    assert responses._kept[ds].size == sum(len(body) for _, body in responses._kept[ds].values())
    largest = max(len(body) for (*_, gzipped), (_, body) in responses._kept[ds].items() if gzipped)  # the heatmap's
    monkeypatch.setattr(responses, "CACHE_BYTES", largest + 1)   # room for one answer: the oldest goes
    small = in_process(demo_db)
    other = "/liquidations/data_quality.json?severity=error"   # (not a stored answer)
    for p in (path, other, path):
        await small.client.get(p)
    assert (await small.client.get(path)).headers["x-cache"] == "hit"
    assert "x-cache" not in (await small.client.get(other)).headers


async def test_the_stored_answers_are_datasettes_own_and_are_sent_asked_afresh(demo_db):
    """The build stored the answers of the views pages ask for first (answers.py); asked afresh, each is sent
    from the database, and is what the query answers when it runs (asked with a parameter that is not stored)."""
    ds = in_process(demo_db)
    with sqlite3.connect(demo_db) as con:
        stored = [r for (r,) in con.execute("SELECT request FROM stored_answers")]
        assert set(stored) == set(answers.requests(con, yaml.safe_load((ROOT / "datasette.yaml").read_text())))
    assert {"/liquidations/heatmap.json?_shape=array",
            "/liquidations/heatmap.json?_json=alive_kusd&last=24h", "/liquidations/heatmap.json?_json=alive_kusd&model=trade_flow"
            } <= set(stored)
    for request in stored:
        for encoding in ("gzip", "identity"):
            sent = await ds.client.get(request, headers={"Cache-Control": "no-cache", "Accept-Encoding": encoding})
            assert sent.status_code == 200 and sent.headers["x-cache"] == "stored", request
            assert sent.headers.get("content-encoding") == (encoding if encoding == "gzip" else None)
        ran = await ds.client.get(request + ("&" if "?" in request else "?") + "_not_stored=1")
        assert "x-cache" not in ran.headers and ran.headers["content-type"] == sent.headers["content-type"]
        assert ran.headers["x-data-source"] == sent.headers["x-data-source"]
        mine, theirs = sent.json(), ran.json()
        for answer in (mine, theirs) if isinstance(mine, dict) else ():
            answer.pop("query_ms", None)
        assert mine == theirs, request
    # the order of the parameters and the empty ones do not matter, as to the query
    again = await ds.client.get("/liquidations/heatmap.json?model=trade_flow&symbol=&last=&_json=alive_kusd")
    assert again.headers["x-cache"] == "stored"
    assert (await ds.client.get("/liquidations/heatmap.json?leverage=10", headers={"Cache-Control": "no-cache"})
            ).headers.get("x-cache") is None   # not stored: the query runs


def test_serve_runs_a_real_server(demo_db):
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "build.py"), "serve",
                               "--db", str(demo_db), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/liquidations/coverage.json?_shape=array") as r:
                    rows = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.3)
        assert any(r["data_type"] == "metrics" for r in rows)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/heatmap") as r:
            plotly_url = re.search(r'src="(/assets/plotly-[^"]+)"', r.read().decode())[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{plotly_url}") as r:
            assert b"plotly.js" in r.read(300)  # served from the installed plotly package, not a CDN
        gzipped = urllib.request.Request(f"http://127.0.0.1:{port}{plotly_url}", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gzipped) as r:
            assert r.headers["Content-Encoding"] == "gzip" and "immutable" in r.headers["Cache-Control"]
            assert b"plotly.js" in gzip.decompress(r.read())[:300]
        heatmap = urllib.request.Request(f"http://127.0.0.1:{port}/liquidations/heatmap.json?_shape=array",
                                         headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(heatmap) as r:   # the stored queries' JSON compressed too
            assert r.headers["Content-Encoding"] == "gzip" and json.loads(gzip.decompress(r.read()))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/liquidations.json") as r:   # exact counts, not 10,001
            counts = {t["name"]: t["count"] for t in json.load(r)["tables"]}
        with sqlite3.connect(demo_db) as con:
            assert counts["heatmap_cells"] == con.execute("SELECT count(*) FROM heatmap_cells").fetchone()[0] > 10_001
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_without_a_database_says_what_to_do(tmp_path):
    result = run_build("--db", str(tmp_path / "none.db"), command="serve")
    assert result.returncode == 2 and "build.py build --data FOLDER --db " + str(tmp_path / "none.db") in result.stderr


def inspect_files(pid: int) -> list[Path]:
    """The inspect files a `build.py serve` of this process id has left (serve.inspect_path's names)."""
    return list(Path(tempfile.gettempdir()).glob(f"liquidation-heatmap-{pid}-*.inspect.json"))


def test_serve_on_a_busy_port_fails_at_once_naming_it(demo_db):
    with socket.socket() as holder:   # another server on the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = subprocess.Popen([sys.executable, str(ROOT / "build.py"), "serve", "--db", str(demo_db), "--port",
                                   str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err, err
    assert "serving" not in out + err and "startup" not in out + err   # nothing said to be served
    assert inspect_files(server.pid) == []


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 1), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_serve_removes_its_inspect_file_when_stopped(demo_db, stop, status):
    """Ctrl-C (SIGINT; click then says 'Aborted!' and exits 1) or SIGTERM: the server shuts down gracefully and
    the inspect file it read at start is gone."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "build.py"), "serve", "--db", str(demo_db), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/versions.json", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.3)
        assert len(inspect_files(server.pid)) == 1   # there while it serves
        server.send_signal(stop)
        output = server.communicate(timeout=30)[0]
    finally:
        server.kill()
    assert server.returncode == status and "Shutting down" in output, output[-2000:]
    assert inspect_files(server.pid) == []


# ---------------------------------------------------------------- a real server under stress (issue 13)


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, float]:
    """A GET: its status, body and seconds, 4xx and 5xx included."""
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read(), time.perf_counter() - began
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.perf_counter() - began


RUNAWAY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"   # never ends
# asked while it runs: Datasette's cheapest answer, stored queries, pages that run SQL (the controls' values), tables
PROMPT = ["/-/versions.json", "/liquidations/coverage.json", "/liquidations/heatmap.json?_shape=array", "/heatmap",
          "/liquidations", "/liquidations/data_coverage"]


def test_a_runaway_query_is_cut_off_while_other_requests_are_answered(server):
    limit_s = yaml.safe_load((ROOT / "datasette.yaml").read_text())["settings"]["sql_time_limit_ms"] / 1000
    fresh = {"Cache-Control": "no-cache"}   # no kept answer: each query runs
    assert all(get(server + path, fresh)[0] == 200 for path in PROMPT)   # (first renders, connections: done before)
    with ThreadPoolExecutor(1) as pool:
        runaway = pool.submit(get, f"{server}/liquidations.json?{urllib.parse.urlencode({'sql': RUNAWAY})}")
        time.sleep(0.2)
        during = []   # (path, status, seconds) of the requests answered while it ran
        while not runaway.done():
            during += [(path, *get(server + path, fresh)[::2]) for path in PROMPT if not runaway.done()]
        status, body, took = runaway.result()
    assert len(during) >= 2 * len(PROMPT), during   # every path answered a few times meanwhile
    assert all(status == 200 for _, status, _ in during), during
    assert max(seconds for *_, seconds in during) < 1, sorted(during, key=lambda d: -d[2])[:3]
    assert status == 400 and json.loads(body)["error"].startswith("SQL query took too long"), body[:300]
    assert limit_s <= took < limit_s + 1.5


WRITES = [   # Datasette 1.0's write endpoints, each with a body it would accept from an actor allowed to write
    ("/liquidations/-/create", {"table": "t", "columns": [{"name": "a", "type": "text"}]}),
    ("/liquidations/data_coverage/-/insert", {"row": {"symbol": "X"}}),
    ("/liquidations/data_coverage/-/upsert", {"rows": [{"symbol": "X"}]}),
    ("/liquidations/data_coverage/-/drop", {"confirm": True}),
    ("/liquidations/data_coverage/1/-/update", {"update": {"symbol": "X"}}),
    ("/liquidations/data_coverage/1/-/delete", {}),
    ("/liquidations/-/query", {"sql": "delete from data_coverage"}),
    ("/liquidations/-/execute-write", {"sql": "delete from data_coverage"}),
    ("/liquidations/-/queries/store", {"name": "q", "sql": "select 1"}),
    ("/liquidations/coverage/-/update", {"sql": "select 1"}),
    ("/liquidations/coverage/-/delete", {}),
]


def test_the_server_is_read_only(server, demo_db):
    before = hashlib.sha256(demo_db.read_bytes()).hexdigest()
    databases = json.loads(get(server + "/-/databases.json")[1])["databases"]
    assert [(d["name"], d["is_mutable"]) for d in databases] == [("liquidations", False)]   # served immutable
    for path, body in WRITES:
        for content_type, data in (("application/json", json.dumps(body)), ("application/x-www-form-urlencoded",
                                                                              urllib.parse.urlencode(body))):
            request = urllib.request.Request(server + path, data=data.encode(), method="POST",
                                             headers={"Content-Type": content_type})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code in (403, 404, 405), (path, content_type, refused.value.code)
    for path in ("/liquidations.json", "/liquidations/-/query.json"):   # ad-hoc SQL: SELECT only
        status, body, _ = get(f"{server}{path}?{urllib.parse.urlencode({'sql': 'delete from data_coverage'})}")
        assert status == 400 and "Statement must be a SELECT" in body.decode()
    assert hashlib.sha256(demo_db.read_bytes()).hexdigest() == before
    assert json.loads(get(server + "/liquidations/coverage.json?_shape=array")[1])   # still whole


def test_the_server_listens_on_loopback_only_by_default(server, demo_db):
    assert cli.parse_args(["serve"]).host == "127.0.0.1"
    command = serve.serve_command(demo_db, 8001)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    port = urllib.parse.urlsplit(server).port
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening sockets from")
    listening = [fields[1] for name in ("/proc/net/tcp", "/proc/net/tcp6") if Path(name).exists()
                 for fields in (line.split() for line in Path(name).read_text().splitlines()[1:])
                 if fields[3] == "0A" and fields[1].endswith(f":{port:04X}")]   # (0A: LISTEN)
    assert listening == [f"0100007F:{port:04X}"]   # 127.0.0.1 alone, not 0.0.0.0 nor ::


def test_the_load_benchmark_runs_without_errors(demo_db):
    """tools/benchmark.py load, briefly: every path asked, no error, memory reported."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "load", "--db", str(demo_db),
                             "--clients", "2", "--seconds", "3"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "errors: 0" in lines[1] and lines[2].startswith("server memory (VmRSS") and lines[4].startswith("overall")
    per_path = lines[5:]
    assert len(per_path) == len(queries()) + 9 and all(int(line.split()[1].replace(",", "")) > 0 for line in per_path)

"""The heatmap's rows (sql/outputs/heatmap_rows.sql) and the heatmap stored query that reads them (datasette.yaml): every
leverage tier and each tier, the resolution chosen, and a range never answered with nothing."""

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from datasette.app import Datasette

from liquidation_heatmap import export

HOUR = dt.timedelta(hours=1)


def sql(db: Path, query: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query, params).fetchall()


SERVED: dict[tuple, Datasette] = {}


async def heatmap(db: Path, **params) -> list[dict]:
    """The heatmap stored query's rows, asked of the Datasette `build.py serve` runs, in process: one per database
    and event loop (a test's), as a server is one for its requests (each start counts the rows of every table)."""
    key = (db, asyncio.get_running_loop())   # (the loop itself, not its id, which a later loop may reuse)
    if key not in SERVED:
        SERVED[key] = Datasette(immutables=[str(db)], metadata=export.load_metadata(), plugins_dir=str(ROOT / "plugins"),
                                config=yaml.safe_load((ROOT / "datasette.yaml").read_text()),
                                template_dir=str(ROOT / "templates"))
    response = await SERVED[key].client.get("/liquidations/heatmap.json", params={**params, "_shape": "array"})
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_the_tiers_rows_add_up_to_every_tiers_row_cell_by_cell(demo_db):
    tiers = [tier for (tier,) in sql(demo_db, "SELECT leverage FROM leverage_tiers ORDER BY leverage")]
    # (a tier's rows: at the base time bucket, every price resolution)
    every = {row[:5]: row[5:] for row in sql(demo_db, """
        SELECT model, symbol, time_bucket_s, price_bucket_usd, ts, cells, price_bucket_first, alive_kusd,
               long_usd_total, short_usd_total, price_open, price_high, price_low, price_close FROM heatmap_rows
        WHERE time_bucket_s = (SELECT min(time_bucket_s) FROM heatmap_resolutions)""")}
    by_tier = {}
    for row in sql(demo_db, """
            SELECT model, symbol, time_bucket_s, price_bucket_usd, ts, leverage, cells, price_bucket_first, alive_kusd,
                   long_usd_total, short_usd_total, price_open, price_high, price_low, price_close
            FROM heatmap_rows_by_leverage"""):
        cells, first, alive, long_usd, short_usd, *prices = row[6:]
        by_tier.setdefault(row[:5], {})[row[5]] = (cells, first, json.loads(alive), long_usd, short_usd, prices)
    assert len(every) > 1000 and by_tier.keys() == every.keys()   # a row of each tier for every row of every tier
    assert {key[3] for key in every} == {100, 200, 500, 1000}
    worst = 0
    for key, (cells, first, alive, long_usd, short_usd, *prices) in every.items():
        rows = by_tier[key]
        assert sorted(rows) == tiers
        # each tier's row has the window and the price of every tier's row ...
        assert all((c, f, p) == (cells, first, prices) for c, f, _, _, _, p in rows.values()), key
        assert all(len(values) == cells for _, _, values, _, _, _ in rows.values())
        # ... and their volumes add up to it, within the rounding to thousands of USDT of each of them
        alive = json.loads(alive)
        sums = [sum(values[i] for _, _, values, _, _, _ in rows.values()) for i in range(cells)]
        worst = max(worst, max(abs(a - s) for a, s in zip(alive, sums)))
        assert sum(r[3] for r in rows.values()) == pytest.approx(long_usd, rel=1e-9)
        assert sum(r[4] for r in rows.values()) == pytest.approx(short_usd, rel=1e-9)
    assert 0 < worst <= (len(tiers) + 1) / 2
    # the cumulative cells the query chooses a resolution by: each row's and every earlier row's at its resolution
    for _, cumulative in sql(demo_db, """
            SELECT cumulative_cells, sum(cells) OVER (PARTITION BY model, symbol, time_bucket_s, price_bucket_usd ORDER BY ts)
            FROM heatmap_rows"""):
        assert _ == cumulative


async def test_a_leverage_tier_gets_only_its_own_volume(demo_db):
    query = {"model": "binance_standard", "bucket_usd": "100", "time_bucket_s": "3600"}
    every, tier_20, tier_50 = [await heatmap(demo_db, **query, leverage=leverage) for leverage in ("", "20", "50")]
    assert [r["ts"] for r in tier_20] == [r["ts"] for r in every] == [r["ts"] for r in tier_50] != []
    # map_levels holds each tier's alive volume per price bucket at every time, as the build computed it apart
    levels = {}
    for ts, by_price in sql(demo_db, "SELECT ts, volume_by_price_usd FROM map_levels WHERE model = 'binance_standard' "
                                     "AND leverage = 20"):
        for price, usd in json.loads(by_price).items():
            levels[ts, float(price)] = levels.get((ts, float(price)), 0) + usd
    seen = 0
    for row in tier_20:
        values = json.loads(row["alive_kusd"])
        for i, kusd in enumerate(values):
            expected = levels.get((row["ts"], row["price_bucket_first"] + 100 * i), 0) / 1000
            assert abs(kusd - expected) <= 0.501, (row["ts"], i)   # (the tier's cells are kept in whole USDT)
            seen += kusd > 0
    assert seen > 100
    # a tier's volume is a part of every tier's, and another tier's is another part
    assert sum(sum(json.loads(r["alive_kusd"])) for r in tier_20) < sum(sum(json.loads(r["alive_kusd"])) for r in every)
    assert [r["alive_kusd"] for r in tier_20] != [r["alive_kusd"] for r in tier_50]
    assert [(r["price_bucket_first"], r["price_close"]) for r in tier_20] == [
        (r["price_bucket_first"], r["price_close"]) for r in every]


async def test_a_range_shorter_than_its_time_bucket_gets_the_bucket_that_holds_it(demo_db):
    (last_day,) = sql(demo_db, "SELECT max(ts) FROM heatmap_rows WHERE time_bucket_s = 86400")[0]
    # the page's own controls offer this: the last 12 hours at a day's buckets
    day = await heatmap(demo_db, last="12h", time_bucket_s="86400")
    assert [(r["ts"], r["time_bucket_s"]) for r in day] == [(last_day, 86400)]
    # one tier's rows come at the base time bucket: its last 12 hours
    tier = await heatmap(demo_db, last="12h", time_bucket_s="86400", leverage="10")
    assert len(tier) == 12 and {r["time_bucket_s"] for r in tier} == {3600}
    # an instant inside an hour: that hour, at the finest resolution (a day's row holds more cells, not more of it)
    hour = await heatmap(demo_db, start="2024-09-02T06:30", end="2024-09-02T06:30")
    assert [(r["ts"], r["time_bucket_s"], r["price_bucket_usd"]) for r in hour] == [("2024-09-02T06:00:00Z", 3600, 100)]
    four = await heatmap(demo_db, start="2024-09-02T06:30", end="2024-09-02T09:00", time_bucket_s="14400")
    assert [r["ts"] for r in four] == ["2024-09-02T04:00:00Z", "2024-09-02T08:00:00Z"]


def chosen_before(db: Path, model: str, start: str, end: str) -> tuple:
    """The resolution the heatmap query chose before it sent the buckets that overlap the range: the most cells
    within 60,000, counting the rows that start in it (rows, time bucket, price bucket)."""
    found = sql(db, """SELECT time_bucket_s, price_bucket_usd, sum(cells), count(*) FROM heatmap_rows
                       WHERE model = ? AND ts >= ? AND ts <= ? GROUP BY 1, 2""", model, start, end)
    t, p, _, n = min(found, key=lambda r: (r[2] > 60_000, -r[2] if r[2] <= 60_000 else r[2], r[0]))
    return t, p, n


async def test_the_resolution_chosen_is_the_one_chosen_before(month_db):
    """The README's 30-day demo: each range preset, and ranges of every length, at the resolution the query chose
    before it sent overlapping buckets; a leverage tier's presets too (at the base time bucket, which every tier's
    presets have here), whose rows have every tier's cells."""
    (end,) = sql(month_db, "SELECT max(ts) FROM heatmap_rows WHERE model = 'ensemble'")[0]
    latest = dt.datetime.fromisoformat(end.removesuffix("Z"))
    hours = {"": 24 * 30, "12h": 12, "24h": 24, "3d": 72, "7d": 168, "30d": 720}
    chosen = {}
    for last, n in hours.items():
        rows = await heatmap(month_db, last=last)
        chosen[last] = (rows[0]["time_bucket_s"], rows[0]["price_bucket_usd"], len(rows))
        start = (latest - (n - 1) * HOUR).isoformat() + "Z"
        assert chosen[last] == chosen_before(month_db, "ensemble", start, end), last
        tier = await heatmap(month_db, last=last, leverage="20")
        assert [(r["ts"], r["time_bucket_s"], r["price_bucket_usd"]) for r in tier] == [
            (r["ts"], r["time_bucket_s"], r["price_bucket_usd"]) for r in rows]
    # the README's figures
    assert chosen[""] == chosen["30d"] == (3600, 500, 720) and chosen["7d"] == (3600, 200, 168)
    assert chosen["12h"] == (3600, 100, 12) and chosen["3d"] == (3600, 100, 72)
    # ranges of every length, from 1 hour to 29 days, starting and ending at a whole hour: the same resolution
    for days, hours_ in [(0, 1), (0, 7), (1, 5), (2, 13), (5, 3), (9, 0), (13, 11), (16, 0), (19, 17), (23, 6), (29, 0)]:
        first = latest - dt.timedelta(days=days, hours=hours_)
        start = first.isoformat() + "Z"
        rows = await heatmap(month_db, model="trade_flow", start=start, end=end)
        time_bucket_s, price_bucket_usd, n = chosen_before(month_db, "trade_flow", start, end)
        assert (rows[0]["time_bucket_s"], rows[0]["price_bucket_usd"]) == (time_bucket_s, price_bucket_usd), (days, hours_)
        assert sum(len(json.loads(r["alive_kusd"])) for r in rows) <= 60_000
        # every bucket that overlaps the range: those that start in it, and the one it starts in
        assert len(rows) == n + (rows[0]["ts"] < start)

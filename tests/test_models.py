"""The liquidation models in DuckDB SQL: formula, parameters, lifecycle, outputs."""

import bisect
import datetime as dt
import math
import statistics
from collections import defaultdict

import duckdb
import pytest
from conftest import run_build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import build

LP_VECTORS = [  # domain.md §2, EP = 100,000: (leverage, notional, long LP, short LP)
    (10, 100_000, 90_361.45, 109_561.75),
    (100, 100_000, 99_397.59, 100_597.61),
    (10, 500_000, 90_391.96, 109_512.44),
]


def build_args(*params: str):
    return build.parse_args(["build", *[f"--param={p}" for p in params]])


@pytest.fixture(scope="module")
def macros():
    con = duckdb.connect()
    build.create_sources(con, build_args())
    build.run_sql_files(con, ["02_staging.sql", "10_parameters.sql", "11_liquidation_price.sql"])
    return con


@pytest.mark.parametrize(("leverage", "notional", "long_lp", "short_lp"), LP_VECTORS)
def test_liquidation_price_reproduces_binance_vectors(macros, leverage, notional, long_lp, short_lp):
    got = macros.execute("SELECT liquidation_price('long', 100000, ?, ?), liquidation_price('short', 100000, ?, ?)",
                         [leverage, notional, leverage, notional]).fetchone()
    assert got == pytest.approx((long_lp, short_lp), abs=0.01)


def test_bracket_comes_from_the_position_notional(macros):
    brackets = macros.execute("SELECT bracket FROM maintenance_bracket(300000) UNION ALL "
                              "SELECT bracket FROM maintenance_bracket(300001) UNION ALL "
                              "SELECT bracket FROM maintenance_bracket(5e9)").fetchall()
    assert brackets == [(1,), (2,)]  # beyond the last cap there is no bracket
    cum = macros.execute("SELECT bracket, maintenance_amount_usd, notional_cap_usd, maintenance_margin_rate "
                         "FROM maintenance_brackets ORDER BY bracket").fetchall()
    for (_, cum_prev, _, mmr_prev), (_, cum_n, _, mmr_n), floor in zip(cum, cum[1:], [c[2] for c in cum]):
        assert cum_n == pytest.approx(cum_prev + floor * (mmr_n - mmr_prev))  # domain.md's check


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=st.floats(1_000, 200_000), leverage=st.integers(2, 124), notional=st.floats(100, 2_000_000))
def test_liquidation_price_properties(macros, entry, leverage, notional):
    long_lp, short_lp, long_higher, short_higher = macros.execute(
        "SELECT liquidation_price('long', $1, $2, $3), liquidation_price('short', $1, $2, $3), "
        "liquidation_price('long', $1, $2 + 1, $3), liquidation_price('short', $1, $2 + 1, $3)",
        [entry, leverage, notional]).fetchone()
    assert long_lp < entry < short_lp
    assert long_higher > long_lp and short_higher < short_lp  # more leverage: closer to the entry


def test_parameters_are_data_and_can_be_overridden(demo_dir, tmp_path):
    db = tmp_path / "p.db"
    result = run_build("--data", str(demo_dir), "--db", str(db), "--param", "price_bucket_usd=250",
                       "--end", "2024-09-02")
    assert result.returncode == 0, result.stderr
    con = duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True)
    assert con.execute("SELECT value, overridden FROM model_parameters WHERE name = 'price_bucket_usd'").fetchone() \
        == (250, True)
    assert con.execute("SELECT count(*) FROM heatmap WHERE price_bucket % 250 <> 0").fetchone()[0] == 0  # DuckDB name
    bad = run_build("--data", str(demo_dir), "--db", str(db), "--param", "price_bukket_usd=5")
    assert bad.returncode == 2 and "unknown model parameter(s): price_bukket_usd" in bad.stderr
    tiers = tmp_path / "tiers.csv"
    tiers.write_text("leverage,weight,typical_notional_usd\n10,0.5,100000\n20,0.4,100000\n")
    bad = run_build("--data", str(demo_dir), "--db", str(db), "--leverage-tiers", str(tiers))
    assert bad.returncode == 2 and "weights must add up to 1" in bad.stderr


# ------------------------------------------------------------------ synthetic markets

T0 = dt.datetime(2024, 9, 1)


def synthetic_build(oi_changes: list[float], returns: list[float], *params: str) -> duckdb.DuckDBPyConnection:
    """Run every SQL layer on a made-up market: 5-minute open interest and 1-minute bars."""
    con = duckdb.connect()
    build.create_sources(con, build_args("time_bucket_s=600", *params))
    con.execute("INSERT INTO src_files (file_id, path, symbol, data_type, kline_interval, period, checksum, status) "
                "VALUES (1, 'm', 'BTCUSDT', 'metrics', NULL, '2024-09-01', 'ok', 'loaded'), "
                "(2, 'k', 'BTCUSDT', 'klines', '1m', '2024-09-01', 'ok', 'loaded')")
    price, oi, bars, closes = 60_000.0, 80_000.0, [], []
    for minute, r in enumerate(returns):
        open_ = price
        price *= math.exp(r)
        ms = int((T0 + dt.timedelta(minutes=minute)).replace(tzinfo=dt.UTC).timestamp() * 1000)
        high, low = max(open_, price) * 1.0005, min(open_, price) * 0.9995
        bars.append((ms, open_, high, low, price, 10.0, ms + 59_999, 10 * price, 5, 5.0, 5 * price, "0", 2))
        closes.append(price)
    con.executemany("INSERT INTO src_klines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", bars)
    metrics = []
    for step, change in enumerate([0.0, *oi_changes]):
        oi *= 1 + change
        ts = T0 + dt.timedelta(minutes=5 * step)
        metrics.append((ts, "BTCUSDT", oi, oi * closes[min(5 * step, len(closes) - 1)], 1.0, 1.0, 1.2, 1.0, 1))
    con.executemany("INSERT INTO src_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", metrics)
    build.run_models(con)
    return con


def scale_lookup(con):
    rows = con.execute("SELECT ts, log_scale FROM oi_scale ORDER BY ts").fetchall()
    times = [r[0] for r in rows]

    def scale(t):
        i = bisect.bisect_right(times, t) - 1
        return math.exp(rows[i][1]) if i >= 0 else 1.0
    return scale


@settings(max_examples=15, deadline=None)
@given(oi_changes=st.lists(st.floats(-0.03, 0.03), min_size=24, max_size=36),
       drift=st.floats(-0.002, 0.002), wiggle=st.floats(0.0005, 0.004))
def test_volume_is_conserved(oi_changes, drift, wiggle):
    returns = [drift + wiggle * math.sin(i / 3) for i in range(5 * len(oi_changes) + 5)]
    con = synthetic_build([0.02, *oi_changes], returns)  # at least one rise: something to conserve
    scale = scale_lookup(con)
    last_end = con.execute("SELECT max(end_ts) FROM time_grid").fetchone()[0]
    for model in ("binance_standard", "funding_adjusted", "ensemble"):
        created = closed = 0.0
        for volume, created_ts, consumed_bar_ts, consumed_end_ts in con.execute(
                "SELECT volume_usd, created_ts, consumed_bar_ts, consumed_end_ts FROM position_grid "
                "WHERE model = ?", [model]).fetchall():
            end_of_life = consumed_bar_ts if consumed_end_ts is not None and consumed_end_ts <= last_end else last_end
            created += volume
            closed += volume * (1 - scale(end_of_life) / scale(created_ts))
        alive = con.execute("SELECT coalesce(sum(alive_volume_usd), 0) FROM alive_cells "
                            "WHERE model = ? AND end_ts = ?", [model, last_end]).fetchone()[0]
        consumed = con.execute("SELECT coalesce(sum(volume_usd), 0) FROM predicted_liquidations WHERE model = ?",
                               [model]).fetchone()[0]
        levels = con.execute("SELECT coalesce(sum(alive_volume_usd), 0) FROM levels WHERE model = ?",
                             [model]).fetchone()[0]
        assert created == pytest.approx(alive + consumed + closed, rel=1e-6, abs=1.0)
        assert levels == pytest.approx(alive, rel=1e-6, abs=1.0)
        assert created > 0


def test_ensemble_is_the_weighted_mix_renormalised_without_trades():
    con = synthetic_build([0.01, -0.005] * 12, [0.0004 * math.sin(i / 4) for i in range(130)])
    heat = {(m, round(b)): v for m, b, v in con.execute(
        "SELECT model, price_bucket, long_usd + short_usd FROM heatmap WHERE ts = (SELECT max(ts) FROM heatmap)"
    ).fetchall()}
    # no aggTrades: trade_flow has no data, so 0.5 / 0.3 renormalise to 0.625 / 0.375
    buckets = {b for _, b in heat}
    assert buckets and not any(m == "trade_flow" for m, _ in heat)
    for b in buckets:
        mix = 0.625 * heat.get(("binance_standard", b), 0) + 0.375 * heat.get(("funding_adjusted", b), 0)
        assert heat.get(("ensemble", b), 0) == pytest.approx(mix, rel=1e-9, abs=0.05)


def test_levels_are_consumed_when_price_trades_through():
    # open interest rises once, then the price falls 30 % in a straight line: every long level
    # (5x .. 100x, all within 20 % of the entry) is consumed, no short level is
    con = synthetic_build([0.05] + [0.0] * 29, [-0.0025] * 155)
    assert con.execute("SELECT count(*) FROM levels WHERE model = 'binance_standard' AND side = 'long'"
                       ).fetchone()[0] == 0
    consumed = dict(con.execute("SELECT leverage, max(consumed_bar_ts) FROM positions WHERE side = 'long' "
                                "AND model = 'binance_standard' GROUP BY 1").fetchall())
    assert consumed[100] < consumed[50] < consumed[25] < consumed[10] < consumed[5]  # nearest first
    assert con.execute("SELECT count(*) FROM levels WHERE model = 'binance_standard' AND side = 'short'"
                       ).fetchone()[0] == 5


def test_falling_open_interest_shrinks_alive_levels_in_proportion():
    con = synthetic_build([0.10] + [0.0] * 10 + [-0.5] + [0.0] * 12, [0.0] * 125)
    alive = dict(con.execute("SELECT end_ts, sum(alive_volume_usd) FROM alive_cells WHERE model = "
                             "'binance_standard' GROUP BY 1").fetchall())
    before, after = alive[T0 + dt.timedelta(minutes=50)], alive[T0 + dt.timedelta(minutes=70)]
    assert after == pytest.approx(before * 0.5, rel=1e-9)


# ------------------------------------------------------------------ against an independent reference


def reference_heatmap(con) -> dict[tuple, float]:
    """binance_standard's lifecycle in plain Python, minute by minute, from the same inputs."""
    bucket_usd = con.execute("SELECT param('price_bucket_usd')").fetchone()[0]
    tiers = con.execute("SELECT leverage, weight, typical_notional_usd, maintenance_margin_rate, "
                        "maintenance_amount_usd FROM tier_brackets").fetchall()
    steps = con.execute("SELECT ts, entry_price, delta_usd, noise_threshold_usd, account_long_share, open_interest, "
                        "previous_open_interest FROM oi_steps ORDER BY ts").fetchall()
    bars = con.execute("SELECT ts, interval_s, high, low, close FROM stg_mark_price_klines ORDER BY ts").fetchall()
    grid = [r[0] for r in con.execute("SELECT end_ts FROM time_grid ORDER BY end_ts").fetchall()]
    events = [(ts, 0, step) for ts, *step in steps] + [(ts, 1, None) for ts in grid] + [(b[0], 2, b) for b in bars]
    alive: list[list] = []  # [side, bucket, volume]
    cells: dict[tuple, float] = defaultdict(float)
    previous_close = None
    for ts, kind, item in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:  # an open-interest row: shrink on a fall, open positions on a rise
            entry, delta, threshold, long_share, oi, previous_oi = item
            if delta < -threshold:
                for piece in alive:
                    piece[2] *= oi / previous_oi
            elif delta > threshold:
                for leverage, weight, notional, mmr, cum in tiers:
                    for side, share in (("long", long_share), ("short", 1 - long_share)):
                        if side == "long":
                            lp = (entry * (1 - 1 / leverage) - cum * entry / notional) / (1 - mmr)
                        else:
                            lp = (entry * (1 + 1 / leverage) + cum * entry / notional) / (1 + mmr)
                        alive.append([side, math.floor(lp / bucket_usd), delta * share * weight])
        elif kind == 1:  # a grid time: record what is alive
            for side, bucket, volume in alive:
                cells[(ts, side, bucket)] += volume
        else:  # a bar: consume every level in the buckets it traded through
            _, _, high, low, close = item
            low, high = min(low, previous_close or low), max(high, previous_close or high)
            touched = range(math.floor(low / bucket_usd), math.floor(high / bucket_usd) + 1)
            alive = [p for p in alive if p[1] not in touched]
            previous_close = close
    return {k: v for k, v in cells.items() if v >= 0.01}


def test_sql_lifecycle_matches_a_plain_python_reference(demo_db):
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    expected = reference_heatmap(con)
    got = {(ts, side, b): v for ts, side, b, v in con.execute(
        "SELECT end_ts, side, bucket_index, sum(alive_volume_usd) FROM alive_cells WHERE model = 'binance_standard' "
        "GROUP BY ALL").fetchall()}
    assert len(expected) > 1000
    assert set(got) == set(expected)
    worst = max(abs(got[k] - expected[k]) / expected[k] for k in expected)
    assert worst < 1e-9


def test_binance_standard_tracks_the_simulated_open_positions(demo_dir, demo_db, capsys):
    """The model's alive volume follows the leveraged speculators' true books (the simulator's truth columns
    long/short_notional_usd; the market makers' unleveraged inventory, which holds their imbalance and is never
    liquidated, is not part of them). The model runs on its default leverage tiers, which are not the
    simulator's: it draws its traders' mix per seed, so this is tracking under a mis-specified mix."""
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    truth = str(demo_dir / "simulator" / "BTCUSDT-open-positions-1h.csv")
    rows = con.execute("""
        WITH model AS (
            SELECT end_ts, sum(alive_volume_usd) FILTER (side = 'long') AS long_usd,
                   sum(alive_volume_usd) FILTER (side = 'short') AS short_usd
            FROM alive_cells WHERE model = 'binance_standard' GROUP BY end_ts
        ), truth AS (
            SELECT "time"::TIMESTAMP AS end_ts, long_notional_usd, short_notional_usd
            FROM read_csv(?, timestampformat = '%Y-%m-%dT%H:%M:%SZ')
        )
        SELECT long_usd, short_usd, long_notional_usd, short_notional_usd
        FROM model JOIN truth USING (end_ts)
        WHERE end_ts >= (SELECT min(end_ts) + INTERVAL 1 DAY FROM model)  -- a day to build up from nothing
        ORDER BY end_ts""", [truth]).fetchall()
    ratio = sum(m + s for m, s, _, _ in rows) / sum(lt + st for _, _, lt, st in rows)
    model_share = [m / (m + s) for m, s, _, _ in rows]
    true_share = [lt / (lt + st) for _, _, lt, st in rows]
    share_error = sum(abs(m - t) for m, t in zip(model_share, true_share)) / len(rows)
    share_correlation = statistics.correlation(model_share, true_share)
    with capsys.disabled():
        print(f"\nbinance_standard vs simulated truth over {len(rows)} hours: alive/true volume {ratio:.2f}, "
              f"mean long-share error {share_error:.3f}, long-share correlation {share_correlation:.2f}")
    assert 0.2 < ratio < 1.2  # it sees net, not gross, openings and nothing opened before the data starts
    assert share_error < 0.1 and share_correlation > 0.5

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

from liquidation_heatmap import pipeline
from liquidation_heatmap.options import BuildOptions

LP_VECTORS = [  # Binance's test vectors, EP = 100,000: (leverage, notional, long LP, short LP)
    (10, 100_000, 90_361.45, 109_561.75),
    (100, 100_000, 99_397.59, 100_597.61),
    (10, 500_000, 90_391.96, 109_512.44),
]


def build_args(*params: str):
    return BuildOptions(param=list(params))


@pytest.fixture(scope="module")
def macros():
    con = duckdb.connect()
    pipeline.create_sources(con, build_args())
    pipeline.run_stages(con, "staging", "parameters")
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
        assert cum_n == pytest.approx(cum_prev + floor * (mmr_n - mmr_prev))  # the bracket table's own check


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
# The lifecycle's mechanics alone: no churn, no warm start, no stop-losses, no side tilt (tests that are
# about those turn them back on).
PLAIN = ("fade_half_life_h=inf", "warm_start_share=0", "stop_loss_share=0", "side_leverage_tilt=0")


def synthetic_build(oi_changes: list[float], returns: list[float], *params: str) -> duckdb.DuckDBPyConnection:
    """Run every SQL layer on a made-up market: 5-minute open interest and 1-minute bars. The lifecycle's
    mechanics are tested alone (PLAIN) unless params turn them back on."""
    con = duckdb.connect()
    pipeline.create_sources(con, build_args("time_bucket_s=600", *PLAIN, *params))
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
    pipeline.run_stages(con, "staging", *pipeline.AFTER_STAGING)
    return con


def scale_lookup(con, model: str, side: str):
    """The scale of a model's alive levels on one side at time t (sql/lifecycle/positions.sql, level_scale)."""
    rows = con.execute("SELECT ts, log_scale FROM level_scale WHERE model = ? AND side = ? ORDER BY ts",
                       [model, side]).fetchall()
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
    last_end = con.execute("SELECT max(end_ts) FROM time_grid").fetchone()[0]
    for model in ("binance_standard", "funding_adjusted", "ensemble"):
        created = closed = 0.0
        scales = {side: scale_lookup(con, model, side) for side in ("long", "short")}
        for side, volume, created_ts, consumed_bar_ts, consumed_end_ts in con.execute(
                "SELECT side, volume_usd, created_ts, consumed_bar_ts, consumed_end_ts FROM position_grid "
                "WHERE model = ?", [model]).fetchall():
            end_of_life = consumed_bar_ts if consumed_end_ts is not None and consumed_end_ts <= last_end else last_end
            created += volume
            closed += volume * (1 - scales[side](end_of_life) / scales[side](created_ts))
        alive = con.execute("SELECT coalesce(sum(alive_volume_usd), 0) FROM alive_cells "
                            "WHERE model = ? AND end_ts = ?", [model, last_end]).fetchone()[0]
        consumed = con.execute("SELECT coalesce(sum(volume_usd), 0) FROM predicted_liquidations WHERE model = ?",
                               [model]).fetchone()[0]
        levels = con.execute("SELECT coalesce(sum(alive_volume_usd), 0) FROM levels WHERE model = ?",
                             [model]).fetchone()[0]
        assert created == pytest.approx(alive + consumed + closed, rel=1e-6, abs=1.0)
        assert levels == pytest.approx(alive, rel=1e-6, abs=1.0)
        assert created > 0


def test_a_rise_opens_as_much_on_both_sides():
    """Every contract has a long and a short: a rise of X opens X of longs and X of shorts (less the
    stop-loss share), whatever the side tilt does to their leverage."""
    con = synthetic_build([0.02, 0.0, 0.03] + [0.0] * 9, [0.0] * 65, "side_leverage_tilt=0.5", "stop_loss_share=0.3")
    rises = con.execute("SELECT sum(delta_usd) FROM oi_steps WHERE delta_usd > noise_threshold_usd").fetchone()[0]
    for model in ("binance_standard", "funding_adjusted", "ensemble"):
        sides = dict(con.execute("SELECT side, sum(volume_usd) FROM pieces WHERE model = ? GROUP BY 1", [model]
                                 ).fetchall())
        factor = 1 if model != "ensemble" else con.execute("SELECT sum(factor) FROM ensemble_base").fetchone()[0]
        assert sides["long"] == pytest.approx(rises * 0.7 * factor, rel=1e-9)
        assert sides["short"] == pytest.approx(sides["long"], rel=1e-9)


def test_the_warm_start_and_the_fade():
    """The open interest already there at the first row is positions opened earlier around the first
    price: levels on both sides from the start, none already past the price. Alive levels halve every
    half-life, and the churn reopens what fades: on a flat market the book tends to open interest."""
    con = synthetic_build([0.0] * 80, [0.0] * 410, "warm_start_share=1", "fade_half_life_h=1")
    first_price, oi_usd = con.execute("SELECT entry_price, previous_open_interest * entry_price FROM oi_steps "
                                      "ORDER BY ts LIMIT 1").fetchone()
    prior = con.execute("SELECT side, min(entry_price), max(entry_price), max(liquidation_price), "
                        "min(liquidation_price), sum(volume_usd) FROM pieces WHERE model = 'binance_standard' "
                        "AND created_ts = (SELECT min(created_ts) FROM pieces) GROUP BY 1 ORDER BY 1").fetchall()
    (_, long_min, long_max, long_highest_lp, _, long_usd), (*_, short_lowest_lp, _) = prior
    assert long_min < 0.97 * first_price and long_max > 1.03 * first_price  # spread around the first price
    assert long_highest_lp < first_price < short_lowest_lp  # survivors only
    assert 0.5 * oi_usd < long_usd < oi_usd
    scale = scale_lookup(con, "binance_standard", "long")
    t = T0 + dt.timedelta(minutes=30)
    assert scale(t + dt.timedelta(hours=1)) / scale(t) == pytest.approx(0.5, rel=1e-9)
    alive = dict(con.execute("SELECT end_ts, sum(alive_volume_usd) FROM alive_cells WHERE model = 'binance_standard' "
                             "GROUP BY 1").fetchall())
    first, last = alive[min(alive)], alive[max(alive)]
    assert first < 0.97 * 2 * oi_usd and last == pytest.approx(2 * oi_usd, rel=0.03)


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
    # open interest rises once, then the price falls 30 % in a straight line: every long level but 2x's
    # (5x .. 125x, all within 20 % of the entry) is consumed, no short level is
    con = synthetic_build([0.05] + [0.0] * 29, [-0.0025] * 155)
    assert con.execute("SELECT list(DISTINCT leverage) FROM levels WHERE model = 'binance_standard' AND side = 'long'"
                       ).fetchone()[0] == [2]
    consumed = dict(con.execute("SELECT leverage, max(consumed_bar_ts) FROM positions WHERE side = 'long' "
                                "AND model = 'binance_standard' GROUP BY 1").fetchall())
    assert consumed[125] <= consumed[100] < consumed[50] < consumed[20] < consumed[10] < consumed[5]  # nearest first
    assert con.execute("SELECT count(*) FROM levels WHERE model = 'binance_standard' AND side = 'short'"
                       ).fetchone()[0] == 7


def test_falling_open_interest_shrinks_alive_levels_in_proportion():
    con = synthetic_build([0.10] + [0.0] * 10 + [-0.5] + [0.0] * 12, [0.0] * 125)
    alive = dict(con.execute("SELECT end_ts, sum(alive_volume_usd) FROM alive_cells WHERE model = "
                             "'binance_standard' GROUP BY 1").fetchall())
    before, after = alive[T0 + dt.timedelta(minutes=50)], alive[T0 + dt.timedelta(minutes=70)]
    assert after == pytest.approx(before * 0.5, rel=1e-9)


# ------------------------------------------------------------------ against an independent reference


def reference_heatmap(con) -> dict[tuple, float]:
    """binance_standard's lifecycle in plain Python, minute by minute, from the same inputs. At every
    open-interest row: every alive level fades (half-life), and on a fall f shrinks on each side by
    1 - max(0, f - c) / (1 - c), c being the share of that side consumed since the last row (weighed, as
    the SQL does, with the gross scale: every fall and the fade shrinking everything); then the rise and
    the churn open as much on both sides, the tiers tilted by the taker signal, less the stop-loss share
    (the first row also opens the warm start, less what is already past the first price). A level is
    consumed by the first bar (range widened to the previous close) that crosses its exact price."""
    param = dict(con.execute("SELECT name, value FROM model_parameters").fetchall())
    tiers = con.execute("SELECT leverage, weight, typical_notional_usd, maintenance_margin_rate, "
                        "maintenance_amount_usd FROM tier_brackets").fetchall()
    steps = con.execute("SELECT ts, entry_price, delta_usd, noise_threshold_usd, churn_usd, taker_imbalance, "
                        "open_interest, previous_open_interest, epoch(ts - previous_ts) FROM oi_steps ORDER BY ts"
                        ).fetchall()
    prior = con.execute("SELECT entry_price, reference_price, volume_usd FROM prior_openings").fetchall()
    bars = con.execute("SELECT ts, interval_s, high, low, close FROM stg_mark_price_klines ORDER BY ts").fetchall()
    grid = [r[0] for r in con.execute("SELECT end_ts FROM time_grid ORDER BY end_ts").fetchall()]
    events = [(ts, 0, step) for ts, *step in steps] + [(ts, 1, None) for ts in grid] + [(b[0], 2, b) for b in bars]
    alive: list[list] = []  # [side, liquidation price, volume, volume / gross scale at opening]
    cells: dict[tuple, float] = defaultdict(float)
    consumed = {"long": 0.0, "short": 0.0}  # since the last open-interest row, weighed by the gross scale
    previous_close, gross = None, 1.0

    def open_positions(entry, reference, volume, signal):
        for side, sign in (("long", 1), ("short", -1)):
            weights = [w * lev ** (param["side_leverage_tilt"] * sign * signal) for lev, w, *_ in tiers]
            for (leverage, _, notional, mmr, cum), weight in zip(tiers, weights, strict=True):
                if side == "long":
                    lp = (entry * (1 - 1 / leverage) - cum * entry / notional) / (1 - mmr)
                else:
                    lp = (entry * (1 + 1 / leverage) + cum * entry / notional) / (1 + mmr)
                piece = volume * (1 - param["stop_loss_share"]) * weight / sum(weights)
                if piece > 0 and (lp < reference if side == "long" else lp > reference):
                    alive.append([side, lp, piece, piece / gross])

    for ts, kind, item in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:  # an open-interest row: fade and shrink, then open
            entry, delta, threshold, churn, imbalance, oi, previous_oi, step_s = item
            fade = math.exp(-math.log(2) * step_s / (3600 * param["fade_half_life_h"]))
            fall = 1 - oi / previous_oi if delta < -threshold else 0.0
            for side, weighed in consumed.items():
                base = weighed + sum(p[3] for p in alive if p[0] == side)
                c = weighed / base if base else 0.0
                factor = (1 - max(0.0, fall - c) / (1 - c) if c < 1 else 1.0) * fade
                for piece in alive:
                    if piece[0] == side:
                        piece[2] *= factor
            gross *= (1 - fall) * fade
            if ts == steps[0][0]:
                for prior_entry, reference, volume in prior:
                    open_positions(prior_entry, reference, volume, 0.0)
            rise = delta if delta > threshold else 0.0
            open_positions(entry, entry, rise + churn, math.tanh(imbalance / param["taker_imbalance_scale"]))
            consumed = {"long": 0.0, "short": 0.0}
        elif kind == 1:  # a grid time: record what is alive
            for side, lp, volume, _ in alive:
                cells[(ts, side, math.floor(lp / param["price_bucket_usd"]))] += volume
        else:  # a bar: consume every level whose exact liquidation price it crossed
            _, _, high, low, close = item
            low, high = min(low, previous_close or low), max(high, previous_close or high)
            crossed = [p for p in alive if (p[1] >= low if p[0] == "long" else p[1] <= high)]
            for side, _, _, weighed in crossed:
                consumed[side] += weighed
            alive = [p for p in alive if p not in crossed]
            previous_close = close
    return {k: v for k, v in cells.items() if v >= 0.01}


# binance_standard's heatmap in the built file, one row per bucket end, side and price bucket (alive_cells, the
# same by leverage, is the build's own temporary table)
HEATMAP_BY_SIDE = """
    SELECT ts + to_seconds(param('time_bucket_s')::BIGINT) AS end_ts, side,
           round(price_bucket / param('price_bucket_usd'))::BIGINT AS bucket_index, v
    FROM (SELECT ts, price_bucket, 'long' AS side, long_usd AS v FROM heatmap WHERE model = 'binance_standard'
          UNION ALL
          SELECT ts, price_bucket, 'short', short_usd FROM heatmap WHERE model = 'binance_standard')
"""


def test_sql_lifecycle_matches_a_plain_python_reference(demo_db):
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    expected = reference_heatmap(con)
    got = {(ts, side, b): v for ts, side, b, v in con.execute(HEATMAP_BY_SIDE + "WHERE v > 0").fetchall()}
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
            SELECT end_ts, sum(v) FILTER (side = 'long') AS long_usd, sum(v) FILTER (side = 'short') AS short_usd
            FROM (""" + HEATMAP_BY_SIDE + """) GROUP BY end_ts
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


# ------------------------------------------------------------------ the numbers under the backtest


def market(bars: list[tuple], metrics: list[tuple], funding: list[tuple] = (), *params: str):
    """Every SQL layer on hand-made rows: bars (open time, open, high, low, close, interval),
    5-minute open interest (time, coins) and funding (time, interval hours, rate)."""
    con = duckdb.connect()
    pipeline.create_sources(con, build_args(*PLAIN, *params))
    intervals = sorted({b[5] for b in bars})
    con.executemany("INSERT INTO src_files (file_id, path, symbol, data_type, kline_interval, period, checksum, status) "
                    "VALUES (?, ?, 'BTCUSDT', ?, ?, '2024-09-01', 'ok', 'loaded')",
                    [[1, "m", "metrics", None], [2, "f", "fundingRate", None]]
                    + [[3 + i, f"k{i}", "klines", interval] for i, interval in enumerate(intervals)])
    ms = lambda t: int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)
    seconds = {"1m": 60, "1h": 3600}
    con.executemany("INSERT INTO src_klines VALUES (?, ?, ?, ?, ?, 1, ?, ?, 1, 0.5, ?, '0', ?)",
                    [(ms(t), o, h, lo, c, ms(t) + seconds[i] * 1000 - 1, c, c / 2, 3 + intervals.index(i))
                     for t, o, h, lo, c, i in bars])
    con.executemany("INSERT INTO src_metrics VALUES (?, 'BTCUSDT', ?, ?, 1.0, 1.0, 1.0, 1.0, 1)",
                    [(t, oi, oi * 60_000) for t, oi in metrics])
    if funding:
        con.executemany("INSERT INTO src_funding_rate VALUES (?, ?, ?, 2)", [(ms(t), h, r) for t, h, r in funding])
    pipeline.run_stages(con, "staging", *pipeline.AFTER_STAGING)
    return con


def test_an_entry_price_uses_only_what_was_known_at_its_time():
    """1-hour bars against 5-minute open interest: the step that ends at 10:05 may not see the 10:00-11:00
    bar (it closes at 11:00); it is priced at the last close known then, 09:00-10:00's."""
    hour = dt.timedelta(hours=1)
    bars = [(T0 + h * hour, 60_000 + 1000 * h, 60_000 + 1000 * h + 500, 60_000 + 1000 * h - 500,
             60_000 + 1000 * h + 40 * (h + 1), "1h") for h in range(12)]
    metrics = [(T0 + dt.timedelta(minutes=5 * i), 1000 + i) for i in range(12 * 12)]
    con = market(bars, metrics)
    prices = dict(con.execute("SELECT ts, entry_price FROM oi_steps").fetchall())
    close = {T0 + (h + 1) * hour: c for (t, _, _, _, c, _), h in zip(bars, range(12))}  # known at the bar's end
    for ts, price in prices.items():
        known = max(end for end in close if end <= ts)
        assert price == close[known], ts
    assert prices[T0 + 10 * hour + dt.timedelta(minutes=5)] == bars[9][4]  # 09:00-10:00's close, not 10:00's hour


def test_utc_offsets_are_honoured(macros):
    got = [macros.execute("SELECT parse_time(?)", [text]).fetchone()[0] for text in (
        "2024-09-01T10:00:00+08:00", "2024-09-01 10:00:00-0530", "2024-09-01T10:00:00Z", "2024-09-01T10:00:00",
        "1725184800000", "2024-09-01", "soon")]
    assert got == [dt.datetime(2024, 9, 1, 2), dt.datetime(2024, 9, 1, 15, 30), dt.datetime(2024, 9, 1, 10),
                   dt.datetime(2024, 9, 1, 10), dt.datetime(2024, 9, 1, 10), dt.datetime(2024, 9, 1), None]


def test_funding_is_compared_per_8_hours():
    """0.01 % every hour is 0.08 % per 8 h: longs are crowded, far above the neutral 0.01 % per 8 h."""
    minute = dt.timedelta(minutes=1)
    bars = [(T0 + i * minute, 60_000, 60_010, 59_990, 60_000, "1m") for i in range(60)]
    metrics = [(T0 + 5 * i * minute, 1000 * 1.01 ** i) for i in range(12)]
    hourly = market(bars, metrics, [(T0, 1, 0.0001)])
    eight_hourly = market(bars, metrics, [(T0, 8, 0.0001)])
    signal = "SELECT avg(signal) FROM openings_funding_adjusted"
    assert hourly.execute(signal).fetchone()[0] == pytest.approx(math.tanh((0.0008 - 0.0001) / 0.0005))
    assert eight_hourly.execute(signal).fetchone()[0] == pytest.approx(0)  # neutral per 8 h


def test_funding_changes_which_side_is_levered():
    """funding_adjusted opens the same volume as binance_standard on each side, but with longs crowded
    (funding far above neutral) its longs hold more of the high leverage, so their levels sit nearer."""
    minute = dt.timedelta(minutes=1)
    bars = [(T0 + i * minute, 60_000, 60_010, 59_990, 60_000, "1m") for i in range(60)]
    metrics = [(T0 + 5 * i * minute, 1000 * 1.01 ** i) for i in range(12)]
    con = market(bars, metrics, [(T0, 1, 0.001)], "side_leverage_tilt=0.5")
    volume = dict(con.execute("SELECT model || side, sum(volume_usd) FROM pieces GROUP BY 1").fetchall())
    assert volume["funding_adjustedlong"] == pytest.approx(volume["funding_adjustedshort"], rel=1e-9)
    assert volume["funding_adjustedlong"] == pytest.approx(volume["binance_standardlong"], rel=1e-9)
    mean = dict(con.execute("SELECT model || side, sum(volume_usd * leverage) / sum(volume_usd) FROM pieces "
                            "GROUP BY 1").fetchall())
    assert mean["funding_adjustedlong"] > 1.5 * mean["funding_adjustedshort"]
    assert mean["binance_standardlong"] == pytest.approx(mean["binance_standardshort"])  # no taker imbalance


def test_a_level_is_consumed_only_when_its_exact_price_is_crossed():
    """A bar that enters a long level's price bucket but stays above its liquidation price consumes
    nothing; the first bar whose low reaches the price does."""
    minute = dt.timedelta(minutes=1)
    bars = [(T0 + i * minute, 60_000, 60_010, 59_990, 60_000, "1m") for i in range(10)]
    metrics = [(T0, 1000), (T0 + 5 * minute, 1100)] + [(T0 + 5 * i * minute, 1100) for i in range(2, 12)]
    con = market(bars, metrics, (), "oi_noise_threshold_usd=1")
    lp = con.execute("SELECT liquidation_price FROM pieces WHERE model = 'binance_standard' AND side = 'long' "
                     "AND leverage = 100").fetchone()[0]
    bucket_low = math.floor(lp / 100) * 100
    path = [(60_000, 60_010, 59_990, 60_000)] * 10 + [(60_000, 60_000, lp + 0.2, lp + 0.5)]  # in the bucket
    path += [(lp + 0.5, lp + 10, lp + 0.2, lp + 5)] * 3 + [(lp + 5, lp + 5, lp - 0.01, lp)]  # then through it
    path += [(lp, 60_000, lp, 60_000)] * 45
    bars = [(T0 + i * minute, o, h, lo, c, "1m") for i, (o, h, lo, c) in enumerate(path)]
    con = market(bars, metrics, (), "oi_noise_threshold_usd=1")
    consumed = con.execute("SELECT consumed_bar_ts FROM positions WHERE model = 'binance_standard' AND side = 'long' "
                           "AND leverage = 100").fetchone()[0]
    assert consumed == T0 + 14 * minute
    assert bucket_low < lp < bars[10][3] < bucket_low + 100  # the bar at 00:10 reached the bucket, not the price


def test_the_sql_finds_the_first_crossing_bar_on_the_demo(demo_db):
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    bars = con.execute("SELECT ts, low, high FROM trigger_bars ORDER BY ts").fetchall()
    times = [b[0] for b in bars]
    sample = con.execute("SELECT side, liquidation_price, created_ts, consumed_bar_ts FROM positions "
                         "WHERE model IN ('binance_standard', 'trade_flow') ORDER BY hash(created_ts, liquidation_price) "
                         "LIMIT 400").fetchall()
    for side, lp, created, consumed in sample:
        later = bars[bisect.bisect_left(times, created):]
        first = next((t for t, low, high in later if (low <= lp if side == "long" else high >= lp)), None)
        assert consumed == first
    assert sum(c is not None for *_, c in sample) > 100


def test_an_open_interest_fall_is_netted_of_the_liquidations_in_it():
    """Open interest rises, then price falls through every 100x and 50x long level while open interest
    falls by 4 %: the model says more than that share of its long book was liquidated, so what is left
    of the longs is not shrunk again; the shorts, of which nothing was liquidated, shrink by 4 %."""
    minute = dt.timedelta(minutes=1)
    flat = [(60_000, 60_010, 59_990, 60_000)] * 10
    drop = [(60_000, 60_000, 58_600, 58_700)] + [(58_700, 58_750, 58_650, 58_700)] * 19
    bars = [(T0 + i * minute, o, h, lo, c, "1m") for i, (o, h, lo, c) in enumerate(flat + drop)]
    metrics = [(T0, 1000), (T0 + 5 * minute, 1200), (T0 + 10 * minute, 1200), (T0 + 15 * minute, 1152)]
    metrics += [(T0 + 5 * i * minute, 1152) for i in range(4, 6)]
    con = market(bars, metrics, (), "oi_noise_threshold_usd=1", "time_bucket_s=300")
    alive = dict(con.execute("SELECT end_ts || side, sum(alive_volume_usd) FROM alive_cells "
                             "WHERE model = 'binance_standard' GROUP BY ALL").fetchall())
    consumed = con.execute("SELECT sum(volume_usd) FROM positions WHERE model = 'binance_standard' AND side = 'long' "
                           "AND consumed_ts IS NOT NULL").fetchone()[0]
    opened = con.execute("SELECT sum(volume_usd) FROM positions WHERE model = 'binance_standard' "
                         "AND side = 'long'").fetchone()[0]
    assert consumed / opened > 0.04  # the liquidations explain the whole fall on the long side
    at = lambda minutes, side: alive[f"{T0 + minutes * minute}{side}"]
    assert at(15, "long") == pytest.approx(opened - consumed, rel=1e-9)
    assert at(15, "short") == pytest.approx(at(10, "short") * 0.96, rel=1e-9)


def test_ensemble_weights_are_shares_of_its_volume(demo_db):
    """trade_flow opens several times what the open-interest models do; before any fit, the ensemble
    still holds its weight's share (0.2) of the volume opened on the first day."""
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    first = "created_ts < (SELECT min(created_ts) FROM pieces) + INTERVAL 1 DAY"
    totals = dict(con.execute(f"SELECT model, sum(volume_usd) FROM pieces WHERE {first} GROUP BY 1").fetchall())
    assert totals["trade_flow"] > 2 * totals["binance_standard"]
    share = dict(con.execute(f"""SELECT p.model, sum(p.volume_usd * b.factor) FROM pieces p JOIN ensemble_base b
                                 USING (symbol, model) WHERE {first} GROUP BY 1""").fetchall())
    assert share["trade_flow"] / sum(share.values()) == pytest.approx(0.2, abs=1e-9)
    # the ensemble's own pieces are those, reweighted by the fit in force (none on the first days)
    ensemble = con.execute(f"SELECT sum(volume_usd) FROM pieces WHERE model = 'ensemble' AND {first}").fetchone()[0]
    assert ensemble == pytest.approx(sum(share.values()), rel=1e-9)

"""Artefacts that look like market events (issue 29): a walk-forward fit of the ensemble (sql/calibration/,
sql/models/ensemble.sql) must not step its heatmap, and the warm start (positions opened before the data,
sql/models/inputs.sql) must not draw as a few thin lines. Measured on the 4-day demo's heatmap, whose realized
liquidations give the ensemble a fit every day from the third on."""

import datetime as dt
import itertools
import math

import duckdb
import pytest

# The seam metric: per model and symbol, the change of the volume alive in the whole heatmap (every price bucket,
# both sides) from one time bucket's end to the next, as |ln(after / before)|; at each fit boundary (the end that
# is a fit's applies_from, where it starts to be used) against the ordinary changes, at every other end.
SEAMS = """
WITH alive AS (
    SELECT model, symbol, ts + to_seconds(param('time_bucket_s')::BIGINT) AS end_ts, sum(long_usd + short_usd) AS usd
    FROM heatmap GROUP BY ALL
),
changes AS (
    SELECT model, symbol, end_ts, abs(ln(usd / lag(usd) OVER (PARTITION BY model, symbol ORDER BY end_ts))) AS change
    FROM alive
),
marked AS (
    SELECT c.*, EXISTS (SELECT 1 FROM calibration_fits f WHERE f.symbol = c.symbol AND f.applies_from = c.end_ts)
                    AS at_fit
    FROM changes c WHERE change IS NOT NULL
)
SELECT model, symbol, count(*) FILTER (at_fit) AS fits, max(change) FILTER (at_fit) AS largest_step,
       quantile_cont(change, 0.99) FILTER (NOT at_fit) AS ordinary_p99,
       quantile_cont(change, 0.5) FILTER (NOT at_fit) AS ordinary_median
FROM marked GROUP BY ALL ORDER BY ALL
"""


@pytest.fixture(scope="module")
def con(demo_db):
    return duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)


def test_no_fit_steps_the_heatmap(con, capsys):
    """At every fit boundary, every model's heatmap changes by no more than its ordinary hour-to-hour change (the
    99th percentile of the changes away from the boundaries). The ensemble's fitted scale used to apply whole from
    each refit on, so every alive level stepped at once: its first fit took the ensemble's volume down by e^1.2
    (3.2x) in one hour, where an ordinary hour changes it by a few percent; the models without a fit are the
    reference, and the ensemble, a mix of their pieces, now changes at a fit as they do."""
    rows = con.execute(SEAMS).fetchall()
    with capsys.disabled():
        for model, symbol, fits, step, p99, median in rows:
            print(f"\n{model} {symbol}: {fits} fits, largest step {step:.4f}; ordinary p99 {p99:.4f}, median {median:.4f}")
    assert con.execute("SELECT count(DISTINCT applies_from) FROM calibration_fits").fetchone()[0] >= 2
    assert {r[0] for r in rows} >= {"ensemble", "binance_standard", "funding_adjusted", "trade_flow", "churn_only"}
    for model, symbol, fits, step, p99, _ in rows:
        assert fits >= 2, (model, symbol)
        assert step <= p99, (model, symbol, step, p99)
    # nor more than the models without a fit change in an ordinary hour (the ensemble's own ordinary changes
    # include its warm-up, when its scale moves from the defaults to the realized volume)
    ensemble = {symbol: step for model, symbol, _, step, *_ in rows if model == "ensemble"}
    for model, symbol, _, _, p99, _ in rows:
        assert ensemble[symbol] <= p99, (model, symbol, ensemble[symbol], p99)


def test_the_ensemble_scale_goes_in_straight_lines_from_fit_to_fit(con):
    """The ensemble's scale (a log, ensemble_scale) goes from where the fit before left it (at the first fit, where
    the warm-up brought it) in a straight line to the fit's own scale, at the churn's rate, ln 2 / fade_half_life_h
    an hour, or over the whole refit period (a day) when that is faster; its first hour is in force at the refit
    itself."""
    fits = con.execute("""
        SELECT f.applies_from, e.from_log_scale, e.to_log_scale, ln(s.kept_share),
               lag(e.to_log_scale) OVER (ORDER BY f.applies_from), f.applies_to, e.ramp_s
        FROM calibration_fits f JOIN ensemble_fit_scale e USING (fit_id) JOIN calibration_scores s USING (fit_id)
        ORDER BY f.applies_from""").fetchall()
    half_life_h = con.execute("SELECT value FROM model_parameters WHERE name = 'fade_half_life_h'").fetchone()[0]
    assert len(fits) >= 2 and fits[-1][5] is None
    warmup_end = con.execute("SELECT first_fit_ts FROM calibration_span").fetchone()[0]
    assert fits[0][0] == warmup_end
    assert fits[0][1] == pytest.approx(con.execute("SELECT log_scale FROM ensemble_warmup_scale WHERE from_ts = ?",
                                                   [warmup_end]).fetchone()[0], abs=1e-12)
    scale = dict(con.execute("SELECT from_ts, log_scale FROM ensemble_scale").fetchall())
    for applies_from, start, end, fitted, previous, applies_to, ramp_s in fits:
        assert end == pytest.approx(fitted, abs=1e-12)
        assert previous is None or start == pytest.approx(previous, abs=1e-12)
        assert ramp_s == pytest.approx(min(86400, abs(end - start) * 3600 * half_life_h / math.log(2)), rel=1e-9)
        # at the refit itself, the ramp's first hour (the fit is known then): a bucket's share, as every later one
        assert scale[applies_from] == pytest.approx(start + (end - start) * min(1, 3600 / ramp_s), abs=1e-12)
        if applies_to is not None:   # (the last fit's ramp is past the data)
            ramp = sorted(t for t in scale if applies_from <= t < applies_to)
            for a, b in itertools.pairwise(ramp):
                assert abs(scale[b] - scale[a]) <= (b - a).total_seconds() * abs(end - start) / ramp_s + 1e-12
            assert scale[ramp[-1]] == pytest.approx(end, abs=1e-12)
    assert any(ramp_s < 86400 for *_, ramp_s in fits)


def test_before_the_first_fit_the_scale_pursues_what_was_realized_so_far(con):
    """From the first window of realized data to the first fit, the scale L moves from 0 (the defaults) towards
    ln R(t), R(t) the least-squares scale of the unfitted ensemble's crossed volume on the realized volume of the
    windows ended by t, closing at each window's end the share of the gap that the window took of the time left
    until the first fit's day ends: the recurrence computed here window by window, from the windows ended by
    then only, which the SQL sums in closed form."""
    first_ts, warmup_end = con.execute("SELECT first_ts, first_fit_ts FROM calibration_span").fetchone()
    refit_days = con.execute("SELECT value FROM model_parameters WHERE name = 'calibration_refit_days'").fetchone()[0]
    deadline = warmup_end + dt.timedelta(days=refit_days)
    windows = con.execute("""
        WITH unfitted AS (
            SELECT k.symbol, k.origin_ts, k.side, k.cell, any_value(coalesce(o.realized_usd, 0)) AS y,
                   coalesce(sum(crossed_volume(r.slow_usd, r.blown_usd, param('stop_loss_share'))), 0) AS x
            FROM calibration_keys k
            LEFT JOIN calibration_observations o USING (symbol, origin_ts, side, cell)
            LEFT JOIN calibration_regressors r USING (symbol, origin_ts, side, cell)
            GROUP BY ALL
        )
        SELECT w.end_ts, sum(x * y), sum(x * x)
        FROM unfitted u JOIN calibration_windows w USING (symbol, origin_ts) WHERE w.end_ts <= ?
        GROUP BY w.end_ts ORDER BY w.end_ts""", [warmup_end]).fetchall()
    computed, level, r, xy, xx, previous_end = {}, 0.0, 0.0, 0.0, 0.0, first_ts
    for end_ts, window_xy, window_xx in windows:
        xy, xx = xy + window_xy, xx + window_xx
        r = math.log(xy / xx) if xx > 0 and xy > 0 else r
        level += (r - level) * (end_ts - previous_end) / (deadline - previous_end)
        computed[end_ts], previous_end = level, end_ts
    stored = dict(con.execute("SELECT from_ts, log_scale FROM ensemble_warmup_scale").fetchall())
    assert len(computed) >= 40 and computed.keys() == stored.keys()
    assert [stored[t] for t in computed] == pytest.approx(list(computed.values()), abs=1e-9)
    # (the demo's realized volume is well below the unfitted ensemble's: most of the way is gone by the first fit)
    assert r < -0.5 and 0.5 * r > stored[warmup_end] > r


def test_the_warm_start_draws_as_a_band_not_lines(con):
    """The open interest there before the data is spread lognormally around the first price: on the first hour's
    heatmap it is a band, each price bucket near the price about as full as the next. Drawn from nine entry prices
    it was 9 x 7 tiers of thin lines with empty buckets between them (adjacent buckets differed by 1.3 times the
    band's volume in total, against 0.1 to 0.16 now)."""
    rows = con.execute("""
        WITH first_price AS (SELECT symbol, any_value(reference_price) AS price FROM prior_openings GROUP BY symbol),
        buckets AS (   -- every price bucket within 3 % of the first price, for every model
            SELECT m.model, p.symbol, unnest(generate_series(floor(p.price * 0.97 / param('price_bucket_usd'))::BIGINT,
                                                             floor(p.price * 1.03 / param('price_bucket_usd'))::BIGINT))
                                      * param('price_bucket_usd') AS price_bucket
            FROM first_price p CROSS JOIN (SELECT DISTINCT model FROM heatmap) m
        ),
        cells AS (
            SELECT b.model, b.symbol, b.price_bucket, coalesce(h.long_usd + h.short_usd, 0) AS usd
            FROM buckets b LEFT JOIN heatmap h ON h.model = b.model AND h.symbol = b.symbol
                AND h.price_bucket = b.price_bucket AND h.ts = (SELECT min(ts) FROM heatmap)
        )
        SELECT model, symbol, sum(abs(usd - previous)) / sum(usd) AS roughness
        FROM (SELECT *, lag(usd) OVER (PARTITION BY model, symbol ORDER BY price_bucket) AS previous FROM cells)
        GROUP BY ALL""").fetchall()
    assert len(rows) >= 5
    assert all(roughness < 0.3 for *_, roughness in rows), rows

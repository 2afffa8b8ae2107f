-- Model ensemble: a weighted mix of the three models' pieces, in which a weight is a share of the
-- ensemble's volume. The models open very different amounts (trade_flow, from every large taker trade,
-- opens several times what the open-interest models do), so each model's pieces are first rescaled to
-- the models' mean opened volume on the first day (ensemble_base, sql/calibration/); then weight
-- 0.2 means 20 % of the ensemble's volume (defaults 0.5 / 0.3 / 0.2, this project's seed plan; they
-- renormalise over the models with data: no aggTrades -> no trade_flow).
-- Where realized liquidations exist the mix is fitted walk-forward (sql/calibration/). A fit's
-- weights a_model x s_role x q_tier are split into its overall scale S (fitted / default volume of its
-- training windows) and a shape (the weights / S). The ensemble's pieces carry the shape of the fit in force
-- when they open (the defaults, 1, before the first fit), and its scale L(t) (a log, ensemble_scale) applies to
-- every alive level at t, through sql/lifecycle/positions.sql, so levels opened under different fits stay comparable:
-- a piece opened at c under fit k is worth shape_k x exp(L(c)) then (its position's volume_usd) and
-- shape_k x exp(L(t)) at t. (Issue 28: the lifecycle divided the scale at the opening out of pieces opened at
-- the shape, so the ensemble's levels were 1 / S too large: on three months of real BTCUSDT its 1-hour
-- calibration, predicted / realized, was 13.2 for longs and 16.5 for shorts where the fits' own out-of-sample
-- ratio was 0.72 / 0.92; then 0.96 / 1.17.)
--
-- The scale never steps (issue 29): applied whole from each refit on, it stepped every alive level at once,
-- a seam on the heatmap that looked like a market event (the first fit, from the unfitted S = 1 to the
-- first S, took the demo's ensemble down 2.8x in an hour, real BTCUSDT's 26x). Instead:
--   * each fit is phased in: L goes in a straight line from the scale of the fit before (in force at the
--     refit) to the new fit's ln S, at the rate at which the churn replaces levels, ln 2 / fade_half_life_h
--     (1.4 % an hour), within the period the fit is used for (calibration_refit_days); so a refit bends L
--     instead of stepping it. On real BTCUSDT a refit changes ln S by 0.06 at the median (a ramp of 4 hours)
--     and 0.6 at most (a day: 0.026 an hour), where the volume alive changes by 0.02 (95th percentile) to
--     0.06 (99th) an hour. The price is that a fit's news is used later: against fits applied whole, ramps
--     over the whole day cost the 30-day demo's ensemble 0.035 of its longs' 1-hour volume Pearson (0.857 ->
--     0.822), ramps at the churn's rate 0.018 (0.839), on real BTCUSDT 0.006 (its shorts' did not change).
--     A forecast made at a refit sees the new fit's first hour only: the 24-hour windows, which all start at
--     one, lost 0.07 (0.88 -> 0.81) of the demo's longs' Pearson, 0.02 (0.94 -> 0.91) on real BTCUSDT;
--   * before the first fit, from the first window of realized data on, L moves from 0 (the defaults) towards
--     ln R(t), where R(t) is the least-squares scale of the unfitted ensemble's crossed volume on the
--     realized volume of the windows ended by t (the scale the first fit starts from, its ridge's centre:
--     sql/calibration/; on real BTCUSDT, R at the first fit was 0.041 and the fit's S 0.036), in a line
--     that the first fit's ramp continues: the change is spread over the warm-up, which is not scored, and the
--     first fit's day. Nothing can spread it further without reading the future or leaving more scored windows
--     short of their fit: that is all the time there is.
-- Nothing here reads realized data from after the time it is used at: a fit is used from its refit date
-- on, R(t) reads the windows ended by t, and the first fit's date is known from the first window on. So the
-- ensemble's backtest stays a forecast, and a build with a day added keeps every earlier scale.
-- The ensemble's levels fade at fade_half_life_h, as every model's (sql/calibration/ says why the
-- half-life is not fitted). The lifecycle is linear in volume, so the ensemble's heatmap, levels and
-- predictions are that mix of the models' pieces.

-- Before the first fit: L(t) pursues ln R(t) at the end of each window e_n, towards the end of the first fit's
-- day D = T + calibration_refit_days (T: when the first fit applies), where the first fit's own ramp ends: at
-- each window it closes the share of the gap that the window took of the time left,
--     L_n = L_(n-1) + (r_n - L_(n-1)) (e_n - e_(n-1)) / (D - e_(n-1)),   r_n = ln R(e_n),
-- from L = 0 (the defaults) at the first window's start e_0. So L moves in a straight line while r holds still,
-- and the first fit takes over at T from where it is, in the same line if its scale is R's. A change of r moves
-- L by that change x the share, small while much time is left, which is when R, on few windows, is least sure
-- (on the demo it went from 0.005 to 0.28 in the first ten hours, which moved (t - e_0) / (T - e_0) x ln R(t),
-- a straight line's weight, 0.4 in an hour); and one late in the warm-up is left in part to the first fit's day
-- (with the deadline at T, the 30-day demo's R rose by e^0.1 in its last three hours, and L 0.1 an hour to
-- follow it, where ordinary hours change by 0.03). The recurrence telescopes into one running sum:
--     L_n = (D - e_n) x sum over i <= n of r_i x (1 / (D - e_i) - 1 / (D - e_(i-1))).
-- (An R of 0 or unknown, before anything was both crossed and realized, leaves the last known R, and 1, the
-- defaults, before any.)
CREATE OR REPLACE TABLE ensemble_warmup_scale AS
WITH unfitted AS (   -- per window, side and cell: the unfitted ensemble's crossed volume x, the realized y
    SELECT k.symbol, w.end_ts, k.side, k.cell, any_value(coalesce(o.realized_usd, 0)) AS y,
           coalesce(sum(crossed_volume(r.slow_usd, r.blown_usd, param('stop_loss_share'))), 0) AS x
    FROM calibration_keys k
    JOIN calibration_windows w ON w.symbol = k.symbol AND w.origin_ts = k.origin_ts
    JOIN calibration_span s ON s.symbol = k.symbol AND w.end_ts <= s.first_fit_ts
    LEFT JOIN calibration_observations o ON o.symbol = k.symbol AND o.origin_ts = k.origin_ts AND o.side = k.side
        AND o.cell = k.cell
    LEFT JOIN calibration_regressors r ON r.symbol = k.symbol AND r.origin_ts = k.origin_ts AND r.side = k.side
        AND r.cell = k.cell
    GROUP BY k.symbol, w.end_ts, k.side, k.cell
),
so_far AS (
    SELECT symbol, end_ts, lag(end_ts) OVER w AS previous_end_ts,
           ln(nullif(sum(sum(x * y)) OVER w / nullif(sum(sum(x * x)) OVER w, 0), 0)) AS log_least_squares_scale
    FROM unfitted GROUP BY symbol, end_ts
    WINDOW w AS (PARTITION BY symbol ORDER BY end_ts)
),
pursued AS (
    SELECT f.symbol, f.end_ts, coalesce(last_value(f.log_least_squares_scale IGNORE NULLS) OVER w, 0) AS r,
           -- D - e_n and D - e_(n-1), in hours
           epoch(s.first_fit_ts - f.end_ts) / 3600 + 24 * param('calibration_refit_days')::BIGINT AS left_h,
           epoch(s.first_fit_ts - coalesce(f.previous_end_ts, s.first_ts)) / 3600
               + 24 * param('calibration_refit_days')::BIGINT AS left_before_h
    FROM so_far f JOIN calibration_span s USING (symbol)
    WINDOW w AS (PARTITION BY f.symbol ORDER BY f.end_ts)
)
SELECT symbol, end_ts AS from_ts,
       left_h * sum(r * (1 / left_h - 1 / left_before_h)) OVER (PARTITION BY symbol ORDER BY end_ts) AS log_scale
FROM pursued
WHERE param('calibration_fit') <> 0;

-- Each fit's ramp: from the scale in force at its refit (the fit before's, or the warm-up's at the first
-- fit) to its own ln S (a fit without a scale, nothing crossed in its training windows, keeps the one before),
-- at the churn's rate, ln 2 / fade_half_life_h an hour, for at most the refit period (so each ramp ends by the
-- next refit, where the next one starts from its end). The fit is known at its refit, so the ramp's first time
-- bucket is in force there already: the heatmap's bucket that ends at the refit moves by one bucket's share,
-- as every bucket of the ramp does, and a forecast made at the refit (every 24-hour window starts at one) uses
-- that much of the fit. (Whole, as before, it was a step; begun after the refit, the 24-hour windows saw each
-- fit a day late.)
CREATE OR REPLACE TABLE ensemble_fit_scale AS
WITH fitted AS (
    SELECT f.fit_id, f.symbol, f.applies_from, ln(CASE WHEN s.kept_share > 0 THEN s.kept_share END) AS log_scale,
           coalesce(w.log_scale, 0) AS warmup_log_scale
    FROM calibration_fits f LEFT JOIN calibration_scores s USING (fit_id)
    ASOF LEFT JOIN ensemble_warmup_scale w ON w.symbol = f.symbol AND f.applies_from >= w.from_ts
),
targets AS (
    SELECT *, coalesce(last_value(log_scale IGNORE NULLS) OVER (PARTITION BY symbol ORDER BY applies_from),
                       warmup_log_scale) AS to_log_scale
    FROM fitted
),
ramps AS (
    SELECT fit_id, symbol, applies_from, to_log_scale,
           coalesce(lag(to_log_scale) OVER (PARTITION BY symbol ORDER BY applies_from), warmup_log_scale) AS from_log_scale
    FROM targets
)
SELECT *,
       -- (least() passes over the NaN of 0 x inf: with fade_half_life_h = inf nothing churns, and the ramp is the period)
       least(86400 * param('calibration_refit_days')::BIGINT,
             abs(to_log_scale - from_log_scale) * 3600 * param('fade_half_life_h') / ln(2)) AS ramp_s
FROM ramps;

-- L(t) at every open-interest step of the symbols with realized liquidations (the steps the lifecycle
-- values levels at: sql/lifecycle/positions.sql), from their first window on; 0 (the defaults) where there is none.
CREATE OR REPLACE TABLE ensemble_scale AS
SELECT s.symbol, s.ts AS from_ts,
       CASE WHEN f.fit_id IS NOT NULL
            THEN f.from_log_scale + (f.to_log_scale - f.from_log_scale)
                 -- (the first time bucket's part of the ramp is in force at the refit itself, as the fit is)
                 * CASE WHEN f.ramp_s > 0
                        THEN least(1, (epoch(s.ts - f.applies_from) + param('time_bucket_s')) / f.ramp_s) ELSE 1 END
            ELSE coalesce(w.log_scale, 0) END AS log_scale
FROM oi_falls s
JOIN calibration_span c ON c.symbol = s.symbol AND s.ts >= c.first_ts
ASOF LEFT JOIN ensemble_fit_scale f ON f.symbol = s.symbol AND s.ts >= f.applies_from
ASOF LEFT JOIN ensemble_warmup_scale w ON w.symbol = s.symbol AND s.ts >= w.from_ts
WHERE param('calibration_fit') <> 0;

INSERT INTO pieces BY NAME
SELECT * FROM (
SELECT 'ensemble' AS model, p.symbol, p.created_ts, p.side, p.leverage, p.entry_price, p.liquidation_price,
       -- the fit's shape (its weights / its S; the defaults, 1, before the first fit); a fitted stop-loss share
       -- keeps (1 - share) of a slowly crossed level where the pieces keep (1 - default)
       p.volume_usd * e.factor
           * coalesce(w.weight * (1 - w.stop_loss_share) / (1 - param('stop_loss_share')) * exp(-s.to_log_scale), 1)
           AS volume_usd,
       p.side_role
FROM pieces p
JOIN ensemble_base e USING (symbol, model)
ASOF LEFT JOIN calibration_fits f ON f.symbol = p.symbol AND p.created_ts >= f.applies_from
LEFT JOIN ensemble_fit_scale s ON s.fit_id = f.fit_id
LEFT JOIN ensemble_weights w ON w.fit_id = f.fit_id AND w.model = p.model AND w.side_role = p.side_role
    AND w.leverage = p.leverage
WHERE p.model <> 'ensemble' AND p.created_ts >= rebuild_from()   -- (the earlier ones are kept: sql/models/pieces.sql)
) WHERE volume_usd > 0;

-- What every model assumes over time: the default stop-loss share and unmodelled share, and the
-- ensemble's fitted ones from each refit on (the stop-loss share, which sets how much a blown-through
-- level liquidates, and the unmodelled part, which only the ensemble forecasts, in sql/backtest/baselines.sql).
-- (The fade's half-life is one for every model and time: fade_half_life_h.)
CREATE OR REPLACE TABLE fit_schedule AS
SELECT DISTINCT model, symbol, '-infinity'::TIMESTAMP AS from_ts,
       param('stop_loss_share') AS stop_loss_share, param('unmodelled_share') AS unmodelled_share
FROM pieces
UNION ALL
SELECT 'ensemble', f.symbol, f.applies_from, t.stop_loss_share, u.unmodelled_share
FROM calibration_fits f JOIN calibration_tier_fit t USING (fit_id) JOIN calibration_unmodelled_fit u USING (fit_id);

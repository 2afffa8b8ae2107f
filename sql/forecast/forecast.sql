-- Forecast layer: the forecast. The levels are one piece of evidence about what a window will liquidate; the
-- position-free terms are others. The forecast is a walk-forward regression of each window's realized
-- liquidation volume on both, per symbol, horizon and side, so that the levels are kept only for what
-- they add: `forecast` uses every term, `forecast_without_levels` the position-free terms alone (it is
-- also the baseline `baseline_blend`: a blend of the baselines fitted the same way, which a model must
-- beat, since a fixed blend of breakout and naive_move already beats each of them on real data).
--
-- The terms of a window (t, t + h] and side, each known at t or a function of the path, as every
-- predictor of the backtest is (a forecast conditional on the path: sql/backtest/baselines.sql):
--   naive_move_usd        open interest x the adverse move / price (the naive_move baseline);
--   breakout_usd          open interest x how far the path breaks the prior 24 hours' range (breakout);
--   volatility_usd        open interest x the prior 24 hours' range / price: how far price has been moving;
--   realized_window_usd   what was liquidated on this side in the horizon before t (liquidations cluster);
--   realized_day_usd      ... in the 24 hours before t;
--   funding_bps           the last funding rate by t, per 8 h, in basis points, + for longs and - for
--                         shorts (crowded longs pay funding and are the ones squeezed);
--   <model>_usd           the volume of each model's levels alive at t that the path crossed
--                         (binance_standard, funding_adjusted, trade_flow where there are trades, churn_only).
-- Volumes enter as square roots, as does the realized volume: liquidation volumes are heavy-tailed, and
-- on the square-root scale one crash hour does not decide the fit, while the forecast squared back is
-- still a volume whose large values matter for the Pearson score (a log scale ranks better but squares
-- back badly: issue 28's measurements on real hourly data). Funding enters as it is.
--
-- The fit: ridge regression on standardised terms, (R + lambda I) beta = r, R the terms' correlation
-- matrix, r their correlations with the realized volume, lambda = forecast_ridge, or 10 / n on n windows
-- if that is more (as if 10 windows of no information had been seen: a fit on fewer windows than terms
-- stays near the mean). It is refitted every day from the first scored window on (backtest_warmup_s after
-- the first day of realized data), on every window known by then (ended by the UTC midnight before:
-- expanding), and used for the windows that start in the next 24 hours. The square of the fitted value
-- is scaled so that it reproduces the training windows' realized total (squaring back would otherwise
-- underestimate: E[y^2] > E[y]^2).

-- Which terms each predictor uses, in a fixed order (x[j] below).
CREATE OR REPLACE TABLE forecast_terms AS
SELECT * FROM (VALUES
    (1, 'naive_move_usd', false), (2, 'breakout_usd', false), (3, 'volatility_usd', false),
    (4, 'realized_window_usd', false), (5, 'realized_day_usd', false), (6, 'funding_bps', false),
    (7, 'binance_standard_usd', true), (8, 'funding_adjusted_usd', true), (9, 'trade_flow_usd', true),
    (10, 'churn_only_usd', true)
) t(j, term, is_level);

CREATE OR REPLACE TABLE forecast_predictors AS
SELECT * FROM (VALUES ('forecast', true), ('forecast_without_levels', false), ('baseline_blend', false)) t(model, with_levels);

-- Every window and side with its terms (the raw values, for the record) and realized volume.
CREATE OR REPLACE TABLE forecast_inputs AS
WITH totals AS (
    SELECT symbol, horizon, origin_ts, side,
           sum(volume_usd) FILTER (WHERE model = 'naive_move') AS naive_move_usd,
           sum(volume_usd) FILTER (WHERE model = 'breakout') AS breakout_usd,
           sum(volume_usd) FILTER (WHERE model = 'binance_standard') AS binance_standard_usd,
           sum(volume_usd) FILTER (WHERE model = 'funding_adjusted') AS funding_adjusted_usd,
           sum(volume_usd) FILTER (WHERE model = 'trade_flow') AS trade_flow_usd,
           sum(volume_usd) FILTER (WHERE model = 'churn_only') AS churn_only_usd
    FROM forecast_levels
    WHERE model IN ('naive_move', 'breakout', 'binance_standard', 'funding_adjusted', 'trade_flow', 'churn_only')
    GROUP BY ALL
),
realized AS (SELECT symbol, horizon, origin_ts, side, sum(volume_usd) AS usd FROM backtest_realized GROUP BY ALL),
running AS (        -- realized volume per side, summed over time: what was liquidated before t is a difference
    SELECT symbol, side, ts, sum(sum(volume_usd)) OVER (PARTITION BY symbol, side ORDER BY ts) AS cum_usd
    FROM realized_liquidations GROUP BY symbol, side, ts
),
windows AS (
    SELECT w.*, s.side, s.sign FROM backtest_windows w CROSS JOIN (VALUES ('long', 1), ('short', -1)) s(side, sign)
),
before_t AS (       -- realized up to (not at) t, t - h and t - 24 h
    SELECT w.symbol, w.horizon, w.origin_ts, w.side,
           coalesce(a.cum_usd, 0) - coalesce(b.cum_usd, 0) AS realized_window_usd,
           coalesce(a.cum_usd, 0) - coalesce(c.cum_usd, 0) AS realized_day_usd
    FROM windows w
    ASOF LEFT JOIN running a ON a.symbol = w.symbol AND a.side = w.side AND w.origin_ts > a.ts
    ASOF LEFT JOIN running b ON b.symbol = w.symbol AND b.side = w.side AND w.origin_ts - to_seconds(w.horizon_s) > b.ts
    ASOF LEFT JOIN running c ON c.symbol = w.symbol AND c.side = w.side AND w.origin_ts - INTERVAL 24 HOURS > c.ts
),
funding AS (
    SELECT w.symbol, w.horizon, w.origin_ts, w.side,
           w.sign * 1e4 * f.funding_rate * 8 / coalesce(nullif(f.funding_interval_hours, 0), 8) AS funding_bps
    FROM windows w ASOF LEFT JOIN stg_funding_rates f ON f.symbol = w.symbol AND w.origin_ts >= f.ts
)
SELECT w.symbol, w.horizon, w.origin_ts, w.end_ts, w.side, w.scored,
       -- the first refit that may train on the window: the UTC day after the one its end falls in (never,
       -- for a window past the realized data)
       CASE WHEN w.realized_known THEN time_bucket(INTERVAL 1 DAY, w.end_ts - INTERVAL 1 MICROSECOND) + INTERVAL 1 DAY
       END AS known_from,
       coalesce(r.usd, 0) AS realized_usd,
       coalesce(t.naive_move_usd, 0) AS naive_move_usd, coalesce(t.breakout_usd, 0) AS breakout_usd,
       w.open_interest_usd * (w.prior_high - w.prior_low) / w.price AS volatility_usd,
       b.realized_window_usd, b.realized_day_usd, coalesce(f.funding_bps, 0) AS funding_bps,
       coalesce(t.binance_standard_usd, 0) AS binance_standard_usd,
       coalesce(t.funding_adjusted_usd, 0) AS funding_adjusted_usd,
       coalesce(t.trade_flow_usd, 0) AS trade_flow_usd, coalesce(t.churn_only_usd, 0) AS churn_only_usd
FROM windows w
LEFT JOIN totals t USING (symbol, horizon, origin_ts, side)
LEFT JOIN realized r USING (symbol, horizon, origin_ts, side)
JOIN before_t b USING (symbol, horizon, origin_ts, side)
JOIN funding f USING (symbol, horizon, origin_ts, side);

-- The same on the fit's scale: v = [1, x_1 .. x_10, y] (1 for the intercept, y the realized volume's root).
CREATE OR REPLACE TABLE forecast_rows AS
SELECT symbol, horizon, origin_ts, side, known_from, realized_usd,
       [1.0, sqrt(greatest(naive_move_usd, 0)), sqrt(greatest(breakout_usd, 0)), sqrt(greatest(volatility_usd, 0)),
        sqrt(greatest(realized_window_usd, 0)), sqrt(greatest(realized_day_usd, 0)), funding_bps,
        sqrt(greatest(binance_standard_usd, 0)), sqrt(greatest(funding_adjusted_usd, 0)),
        sqrt(greatest(trade_flow_usd, 0)), sqrt(greatest(churn_only_usd, 0)), sqrt(greatest(realized_usd, 0))] AS v
FROM forecast_inputs;

-- The refits: every day from the first scored window's start (backtest_warmup_s after the first realized
-- day's: sql/backtest/windows.sql) to the last window's, per side: scoring starts when the first applies.
CREATE OR REPLACE TABLE forecast_fits AS
WITH span AS (SELECT symbol, horizon, side, min(origin_ts) FILTER (WHERE scored) AS first_ts, max(origin_ts) AS last_ts
              FROM forecast_inputs GROUP BY ALL)
SELECT symbol, horizon, side, unnest(generate_series(first_ts, last_ts, INTERVAL 1 DAY)) AS applies_from
FROM span WHERE first_ts IS NOT NULL
  AND param('calibration_fit') <> 0;   -- (calibration_fit = 0: nothing fitted to realized data, no forecast)

-- Sums of v_j v_k over the training windows of each refit: per day the windows became known, summed
-- over the days up to the refit (expanding), so each window is read once, not once per refit.
CREATE OR REPLACE TABLE forecast_moments AS
WITH daily AS (
    SELECT symbol, horizon, side, known_from, j, k, sum(v[j] * v[k]) AS s
    FROM forecast_rows, range(1, 13) a(j), range(1, 13) b(k) WHERE k >= j AND known_from IS NOT NULL GROUP BY ALL
),
running AS (
    SELECT *, sum(s) OVER (PARTITION BY symbol, horizon, side, j, k ORDER BY known_from) AS total
    FROM daily
)
SELECT f.symbol, f.horizon, f.side, f.applies_from, r.j, r.k, r.total
FROM forecast_fits f
ASOF JOIN (SELECT DISTINCT symbol, horizon, side, known_from FROM running) d
    ON d.symbol = f.symbol AND d.horizon = f.horizon AND d.side = f.side AND f.applies_from >= d.known_from
JOIN running r ON r.symbol = d.symbol AND r.horizon = d.horizon AND r.side = d.side AND r.known_from = d.known_from;

-- Solving (G + alpha I) beta = r by Gauss-Jordan elimination, one pivot a step (list_reduce over the
-- pivots): G + alpha I is symmetric positive definite, so no pivot is 0 and none needs exchanging.
CREATE OR REPLACE MACRO gauss_jordan_step(m, k) AS
    list_transform(m, lambda row, i: CASE WHEN i = k THEN list_transform(row, lambda x: x / m[k][k])
                                          ELSE list_transform(row, lambda x, j: x - row[k] * m[k][j] / m[k][k]) END);
CREATE OR REPLACE MACRO solve_linear(a, b) AS
    list_transform(list_reduce(range(1, len(b) + 1), lambda m, k: gauss_jordan_step(m, k),
                               list_transform(a, lambda row, i: list_append(row, b[i]))),
                   lambda row: row[len(row)]);

-- Each refit's coefficients per predictor: the intercept and one coefficient per term on the fit's scale
-- (0 for a term the predictor does not use, or that did not vary in the training windows).
CREATE OR REPLACE TABLE forecast_coefficients AS
WITH moments AS (   -- both halves of the symmetric sums
    SELECT symbol, horizon, side, applies_from, j, k, total FROM forecast_moments
    UNION ALL SELECT symbol, horizon, side, applies_from, k, j, total FROM forecast_moments WHERE k > j
),
n AS (SELECT symbol, horizon, side, applies_from, total AS n FROM moments WHERE j = 1 AND k = 1),
centred AS (        -- sums of (v_j - mean)(v_k - mean), from j, k = 2 (the terms; 12 is y)
    SELECT m.symbol, m.horizon, m.side, m.applies_from, m.j, m.k, n.n, a.total / n.n AS mean_j,
           m.total - a.total * b.total / n.n AS s
    FROM moments m JOIN n USING (symbol, horizon, side, applies_from)
    JOIN moments a ON a.symbol = m.symbol AND a.horizon = m.horizon AND a.side = m.side
        AND a.applies_from = m.applies_from AND a.j = 1 AND a.k = m.j
    JOIN moments b ON b.symbol = m.symbol AND b.horizon = m.horizon AND b.side = m.side
        AND b.applies_from = m.applies_from AND b.j = 1 AND b.k = m.k
    WHERE m.j > 1 AND m.k > 1
),
spread AS (         -- each term's root sum of squares about its mean, where it varied and the predictor uses it
    SELECT c.symbol, c.horizon, c.side, c.applies_from, p.model, c.j, c.n, c.mean_j,
           CASE WHEN c.j = 12 OR (p.with_levels OR NOT t.is_level) AND c.s > 1e-9 * c.n THEN sqrt(c.s) END AS root_s
    FROM centred c CROSS JOIN forecast_predictors p LEFT JOIN forecast_terms t ON t.j + 1 = c.j
    WHERE c.j = c.k
),
systems AS (
    SELECT c.symbol, c.horizon, c.side, c.applies_from, a.model, c.j, c.k,
           coalesce(c.s / (a.root_s * b.root_s), 0)
           + CASE WHEN c.j = c.k THEN greatest(param('forecast_ridge') * c.n, 10) / c.n ELSE 0 END AS g
    FROM centred c
    JOIN spread a ON a.symbol = c.symbol AND a.horizon = c.horizon AND a.side = c.side
        AND a.applies_from = c.applies_from AND a.j = c.j
    JOIN spread b ON b.symbol = c.symbol AND b.horizon = c.horizon AND b.side = c.side
        AND b.applies_from = c.applies_from AND b.j = c.k AND b.model = a.model
),
matrices AS (
    SELECT symbol, horizon, side, applies_from, model, list(g_row ORDER BY j) AS g, list(r ORDER BY j) AS r
    FROM (SELECT symbol, horizon, side, applies_from, model, j,
                 list(g ORDER BY k) FILTER (WHERE k < 12) AS g_row, any_value(g) FILTER (WHERE k = 12) AS r
          FROM systems WHERE j < 12 GROUP BY ALL)
    GROUP BY ALL
),
solved AS (         -- beta on the standardised terms (correlation matrix: G / n), back to the fit's scale
    SELECT m.*, solve_linear(m.g, m.r) AS beta,
           list(s.root_s ORDER BY s.j) FILTER (WHERE s.j < 12) AS root_s,
           list(s.mean_j ORDER BY s.j) FILTER (WHERE s.j < 12) AS mean_x,
           any_value(s.root_s) FILTER (WHERE s.j = 12) AS root_y, any_value(s.mean_j) FILTER (WHERE s.j = 12) AS mean_y,
           any_value(s.n) AS n
    FROM matrices m JOIN spread s USING (symbol, horizon, side, applies_from, model)
    GROUP BY ALL
)
SELECT symbol, horizon, side, applies_from, model, n::BIGINT AS train_windows,
       list_transform(beta, lambda b, i: coalesce(b * root_y / root_s[i], 0)) AS coefficients,
       mean_y - list_dot_product(list_transform(beta, lambda b, i: coalesce(b * root_y / root_s[i], 0)), mean_x) AS intercept
FROM solved;

-- Each refit's scale: its squared fitted values summed over its training windows, against what was
-- realized in them, so that the forecast's total matches the training windows' (calibration near 1).
CREATE OR REPLACE TABLE forecast_fitted AS
SELECT c.*, sum(r.realized_usd) / nullif(sum(greatest(0, c.intercept + list_dot_product(c.coefficients, r.v[2:11])) ** 2), 0)
           AS volume_scale,
       min(r.origin_ts) AS train_from, max(r.origin_ts) + to_seconds(any_value(h.horizon_s)) AS train_to
FROM forecast_coefficients c
JOIN backtest_horizons h USING (horizon)
JOIN forecast_rows r ON r.symbol = c.symbol AND r.horizon = c.horizon AND r.side = c.side AND r.known_from <= c.applies_from
GROUP BY ALL;

-- The forecast of every window from the first refit on, with the refit in force at its start.
CREATE OR REPLACE TABLE forecast_totals AS
SELECT f.model, r.symbol, r.horizon, r.origin_ts, r.side,
       f.volume_scale * greatest(0, f.intercept + list_dot_product(f.coefficients, r.v[2:11])) ** 2 AS volume_usd
FROM forecast_rows r
ASOF JOIN (SELECT DISTINCT symbol, horizon, side, applies_from FROM forecast_fitted) a
    ON a.symbol = r.symbol AND a.horizon = r.horizon AND a.side = r.side AND r.origin_ts >= a.applies_from
JOIN forecast_fitted f ON f.symbol = a.symbol AND f.horizon = a.horizon AND f.side = a.side AND f.applies_from = a.applies_from;

-- Into forecast_levels, over the crossed buckets, so that every predictor is scored by the same SQL: the
-- forecast spreads its volume half like the models' crossed levels (where they crossed any) and half
-- like the move (open interest x the crossed share of each bucket); the blend of position-free terms
-- like the move alone; a window whose path crossed nothing on that side holds it at the price's bucket.
DELETE FROM forecast_levels WHERE model IN (SELECT model FROM forecast_predictors);
INSERT INTO forecast_levels BY NAME
WITH levels AS (
    SELECT symbol, horizon, origin_ts, side, bucket_index, sum(volume_usd) AS usd,
           sum(sum(volume_usd)) OVER (PARTITION BY symbol, horizon, origin_ts, side) AS total_usd
    FROM forecast_levels WHERE model IN ('binance_standard', 'funding_adjusted', 'trade_flow', 'churn_only')
    GROUP BY symbol, horizon, origin_ts, side, bucket_index
),
move AS (
    SELECT symbol, horizon, origin_ts, side, bucket_index,
           move_exposure_usd / sum(move_exposure_usd) OVER (PARTITION BY symbol, horizon, origin_ts, side) AS share
    FROM backtest_crossed_buckets
)
SELECT t.model, t.symbol, t.horizon, t.origin_ts, t.side, coalesce(m.bucket_index, w.price_bucket_index) AS bucket_index,
       t.volume_usd * CASE WHEN m.share IS NULL THEN 1     -- a path that crossed nothing: at the price's bucket
                           WHEN p.with_levels AND lt.total_usd > 0
                           THEN (m.share + coalesce(l.usd, 0) / lt.total_usd) / 2 ELSE m.share END AS volume_usd
FROM forecast_totals t JOIN forecast_predictors p USING (model)
JOIN backtest_windows w USING (symbol, horizon, origin_ts)
LEFT JOIN move m USING (symbol, horizon, origin_ts, side)
LEFT JOIN (SELECT symbol, horizon, origin_ts, side, any_value(total_usd) AS total_usd FROM levels GROUP BY ALL) lt
    USING (symbol, horizon, origin_ts, side)
LEFT JOIN levels l USING (symbol, horizon, origin_ts, side, bucket_index)
WHERE t.volume_usd > 0;

-- The forecast's fits beside the ensemble's in fitted_parameters (sql/calibration/), one row per
-- refit, predictor, horizon, side and coefficient, on the fit's scale (square roots of USD; funding in
-- basis points per 8 h): forecast_<horizon>_<side>_<term>, _intercept and _volume_scale. Each is in force
-- for the day after its applies_from (applies_to is never empty: the pages' banner is the ensemble's).
INSERT INTO fitted_parameters BY NAME
WITH named AS (
    SELECT f.*, t.term, f.coefficients[t.j] AS value
    FROM forecast_fitted f JOIN forecast_terms t ON f.model = 'forecast' OR NOT t.is_level
    WHERE f.model <> 'baseline_blend'
    UNION ALL SELECT f.*, 'intercept', f.intercept FROM forecast_fitted f WHERE f.model <> 'baseline_blend'
    UNION ALL SELECT f.*, 'volume_scale', f.volume_scale FROM forecast_fitted f WHERE f.model <> 'baseline_blend'
)
SELECT symbol, NULL AS fit_id, train_from, train_to, applies_from, applies_from + INTERVAL 1 DAY AS applies_to,
       model || '_' || horizon || '_' || side || '_' || term AS parameter, value, train_windows
FROM named;

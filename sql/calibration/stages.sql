-- The calibration layer's three stages of non-negative least squares (see calibration/observations.sql):
-- the tiers at each candidate stop-loss share, the side roles, the models; and the unmodelled share.

-- Every window, side and cell where something was realized or crossed (and every window and side).
CREATE OR REPLACE TABLE calibration_keys AS
SELECT symbol, origin_ts, side, cell FROM calibration_observations
UNION SELECT symbol, origin_ts, side, cell FROM calibration_regressors;

-- Each fit's training observations (windows that ended by its refit date) with their regressors.
CREATE OR REPLACE TABLE calibration_training AS
SELECT f.fit_id, k.symbol, k.origin_ts, k.side, k.cell, coalesce(o.realized_usd, 0) AS y, r.model,
       r.side_role, r.leverage, coalesce(r.slow_usd, 0) AS slow_usd, coalesce(r.blown_usd, 0) AS blown_usd
FROM calibration_fits f SEMI JOIN calibration_refits USING (fit_id)
JOIN calibration_windows w ON w.symbol = f.symbol AND w.origin_ts >= f.train_from AND w.end_ts <= f.train_to
JOIN calibration_keys k ON k.symbol = w.symbol AND k.origin_ts = w.origin_ts
LEFT JOIN calibration_observations o ON o.symbol = k.symbol AND o.origin_ts = k.origin_ts AND o.side = k.side AND o.cell = k.cell
LEFT JOIN calibration_regressors r ON r.symbol = k.symbol AND r.origin_ts = k.origin_ts AND r.side = k.side
    AND r.cell = k.cell;

-- The features of the three stages, numbered in a fixed order.
CREATE OR REPLACE TABLE calibration_features AS
SELECT 'tier' AS stage, row_number() OVER (ORDER BY leverage) AS j, leverage::VARCHAR AS feature FROM leverage_tiers
UNION ALL SELECT 'role', 1, 'levered' UNION ALL SELECT 'role', 2, 'other'
UNION ALL SELECT 'model', row_number() OVER (ORDER BY model), model FROM (SELECT DISTINCT model FROM ensemble_base);

-- A stage's design: every training window and side of a problem, with each feature's regressor weighed
-- by what the earlier stages fitted (weight), zero where nothing of it was crossed.
CREATE OR REPLACE MACRO calibration_design(stage_name, weighed) AS TABLE
WITH rows AS (SELECT * FROM query_table(weighed)),
obs AS (SELECT DISTINCT problem_id, origin_ts, side, cell, y FROM rows)
SELECT o.problem_id, o.origin_ts, o.side, o.cell, f.j, o.y, coalesce(sum(r.weight * r.x), 0) AS x
FROM obs o CROSS JOIN (SELECT * FROM calibration_features WHERE stage = stage_name) f
LEFT JOIN rows r ON r.problem_id = o.problem_id AND r.origin_ts = o.origin_ts AND r.side = o.side AND r.cell = o.cell
    AND r.feature = f.feature
GROUP BY ALL;

INSERT INTO calibration_fade_fit BY NAME
SELECT fit_id, param('fade_half_life_h') AS half_life_h FROM calibration_refits;

-- Stage 1: the tiers, for each candidate stop-loss share (one problem per fit and share); the share
-- with the least training error wins, and with it the tier weights q.
CREATE OR REPLACE TABLE calibration_stage_rows AS
SELECT dense_rank() OVER (ORDER BY c.fit_id, s.stop_loss_share) AS problem_id, c.*, s.stop_loss_share,
       c.leverage::VARCHAR AS feature, 1.0 AS weight, crossed_volume(c.slow_usd, c.blown_usd, s.stop_loss_share) AS x
FROM calibration_training c CROSS JOIN stop_candidates s;
CREATE OR REPLACE TABLE calibration_design AS SELECT * FROM calibration_design('tier', 'calibration_stage_rows');
CREATE OR REPLACE TABLE calibration_problems AS SELECT * FROM nnls_problems('calibration_design');
-- (errors equal to 9 digits are a tie, which the default wins: where the data cannot tell candidates
-- apart, as every stop-loss share when nothing was blown through, sums in another order must not pick)
CREATE OR REPLACE MACRO relative_error(error, fit_id) AS round(error / max(abs(error)) OVER (PARTITION BY fit_id), 9);
INSERT INTO calibration_tier_fit BY NAME
SELECT * EXCLUDE (relative_error) FROM (
    SELECT k.fit_id, k.stop_loss_share, s.w AS tier_weights, s.error,
           relative_error(s.error, k.fit_id) AS relative_error
    FROM nnls('calibration_problems') s
    JOIN (SELECT DISTINCT problem_id, fit_id, stop_loss_share FROM calibration_stage_rows) k USING (problem_id))
QUALIFY row_number() OVER (PARTITION BY fit_id ORDER BY relative_error, abs(stop_loss_share - param('stop_loss_share')),
                                                        stop_loss_share) = 1;

-- The training rows at each fit's stop-loss share, with the fitted tier weight q.
CREATE OR REPLACE TABLE calibration_chosen AS
SELECT c.*, crossed_volume(c.slow_usd, c.blown_usd, f.stop_loss_share) AS x, f.tier_weights[t.j] AS q
FROM calibration_training c JOIN calibration_tier_fit f USING (fit_id)
LEFT JOIN calibration_features t ON t.stage = 'tier' AND t.feature = c.leverage::VARCHAR;

-- Stage 2: the levered side against the other, with q fixed.
CREATE OR REPLACE TABLE calibration_stage_rows AS
SELECT fit_id AS problem_id, *, side_role AS feature, q AS weight FROM calibration_chosen;
CREATE OR REPLACE TABLE calibration_design AS SELECT * FROM calibration_design('role', 'calibration_stage_rows');
CREATE OR REPLACE TABLE calibration_problems AS SELECT * FROM nnls_problems('calibration_design');
INSERT INTO calibration_role_fit BY NAME
SELECT problem_id AS fit_id, w AS role_weights FROM nnls('calibration_problems');

-- Stage 3: the models, with q and s fixed.
CREATE OR REPLACE TABLE calibration_stage_rows AS
SELECT c.fit_id AS problem_id, c.*, c.model AS feature, c.q * r.role_weights[CASE c.side_role WHEN 'levered' THEN 1 ELSE 2 END] AS weight
FROM calibration_chosen c JOIN calibration_role_fit r USING (fit_id);
CREATE OR REPLACE TABLE calibration_design AS SELECT * FROM calibration_design('model', 'calibration_stage_rows');
CREATE OR REPLACE TABLE calibration_problems AS SELECT * FROM nnls_problems('calibration_design');
INSERT INTO calibration_model_fit BY NAME
SELECT problem_id AS fit_id, w AS model_weights FROM nnls('calibration_problems');

-- The fitted weight of every group of the ensemble's pieces, per fit: a_model x s_role x q_tier
-- (1 = the default). sql/models/ensemble.sql opens the ensemble's pieces with the fit in force.
CREATE OR REPLACE TABLE ensemble_weights AS
SELECT f.fit_id, f.symbol, f.applies_from, t.stop_loss_share, m.feature AS model, r.feature AS side_role,
       l.feature::INTEGER AS leverage,
       a.model_weights[m.j] * s.role_weights[r.j] * t.tier_weights[l.j] AS weight
FROM calibration_fits f
JOIN calibration_tier_fit t USING (fit_id) JOIN calibration_role_fit s USING (fit_id)
JOIN calibration_model_fit a USING (fit_id)
JOIN calibration_features m ON m.stage = 'model' JOIN calibration_features r ON r.stage = 'role'
JOIN calibration_features l ON l.stage = 'tier';

-- Each fit's prediction of the levels' volume (its weights and stop-loss share) beside the
-- unfitted ensemble's and the realized volume, per window, side and cell, over its training windows and
-- the windows it is used in.
CREATE OR REPLACE TABLE calibration_predicted AS
SELECT f.fit_id, k.origin_ts, k.side, k.cell, k.origin_ts < f.train_to AS in_training,
       coalesce(any_value(o.realized_usd), 0) AS y,
       coalesce(sum(crossed_volume(r.slow_usd, r.blown_usd, w.stop_loss_share) * w.weight), 0) AS fitted_usd,
       coalesce(sum(crossed_volume(r.slow_usd, r.blown_usd, param('stop_loss_share'))), 0) AS default_usd
FROM calibration_fits f
JOIN calibration_windows cw ON cw.symbol = f.symbol
    AND (cw.origin_ts >= f.train_from AND cw.end_ts <= f.train_to OR cw.origin_ts >= f.applies_from AND cw.end_ts <= f.applies_to)
JOIN calibration_keys k ON k.symbol = cw.symbol AND k.origin_ts = cw.origin_ts
LEFT JOIN calibration_observations o ON o.symbol = k.symbol AND o.origin_ts = k.origin_ts AND o.side = k.side AND o.cell = k.cell
LEFT JOIN calibration_regressors r ON r.symbol = k.symbol AND r.origin_ts = k.origin_ts AND r.side = k.side AND r.cell = k.cell
LEFT JOIN ensemble_weights w ON w.fit_id = f.fit_id AND w.model = r.model AND w.side_role = r.side_role
    AND w.leverage = r.leverage
GROUP BY ALL;

-- Each fit scored: the Pearson correlation of its levels' prediction with the realized volume over its
-- training windows, and over the windows it is used in (the next period: out of sample), beside the
-- unfitted ensemble's on the same windows (summed over the cells: the score is per window, as the
-- backtest's).
CREATE OR REPLACE TABLE calibration_scores AS
WITH predicted AS (
    SELECT fit_id, origin_ts, side, in_training, sum(y) AS y, sum(fitted_usd) AS fitted_usd, sum(default_usd) AS default_usd
    FROM calibration_predicted GROUP BY ALL
)
SELECT fit_id,
       corr(fitted_usd, y) FILTER (WHERE in_training) AS train_pearson,
       count(*) FILTER (WHERE in_training) / 2 AS train_windows,
       sum(fitted_usd) FILTER (WHERE in_training) / nullif(sum(default_usd) FILTER (WHERE in_training), 0) AS kept_share,
       corr(fitted_usd, y) FILTER (WHERE NOT in_training) AS test_pearson,
       corr(default_usd, y) FILTER (WHERE NOT in_training) AS default_test_pearson
FROM predicted GROUP BY fit_id;

-- Stage 4: the unmodelled part. Some liquidations hit no level the models hold: cross-margin accounts
-- (whose liquidation price moves with the rest of the account), positions opened and closed between
-- the data's steps, margin eroded by funding. So an hour whose path crosses no level still liquidates
-- something, and the ensemble adds unmodelled_share x open interest x the share of price the path
-- crossed (the naive_move baseline's volume, move_exposure_usd) to its forecast. The share is fitted to
-- what the levels leave unexplained (realized minus the levels' fitted volume, per window, side and
-- cell), by least squares pulled towards the default by the same ridge:
--     share = max(0, (sum x r / sum x^2 + ridge x default) / (1 + ridge)).
-- A default of 0 switches the part off: the share stays 0, and the ensemble forecasts its levels alone.
CREATE OR REPLACE TABLE calibration_unmodelled AS
SELECT c.symbol, c.origin_ts, c.side, calibration_cell(b.by_price, c.bucket_index) AS cell, sum(c.move_exposure_usd) AS x
FROM backtest_crossed_buckets c JOIN calibration_windows w USING (symbol, horizon, origin_ts)
LEFT JOIN calibration_by_price b ON b.symbol = c.symbol
GROUP BY ALL;
INSERT INTO calibration_unmodelled_fit BY NAME
WITH unmodelled AS (
    SELECT f.fit_id, u.origin_ts, u.side, u.cell, u.x
    FROM calibration_fits f SEMI JOIN calibration_refits USING (fit_id)
    JOIN calibration_windows w ON w.symbol = f.symbol AND w.origin_ts >= f.train_from AND w.end_ts <= f.train_to
    JOIN calibration_unmodelled u ON u.symbol = w.symbol AND u.origin_ts = w.origin_ts
),
residuals AS (
    SELECT fit_id, coalesce(p.y, 0) - coalesce(p.fitted_usd, 0) AS r, coalesce(u.x, 0) AS x
    FROM (SELECT * FROM calibration_predicted SEMI JOIN calibration_refits USING (fit_id) WHERE in_training) p
    FULL JOIN unmodelled u USING (fit_id, origin_ts, side, cell)
)
SELECT fit_id, CASE WHEN param('unmodelled_share') = 0 THEN 0
                    ELSE greatest(0, (coalesce(sum(x * r) / nullif(sum(x * x), 0), param('unmodelled_share'))
                                      + param('calibration_ridge') * param('unmodelled_share'))
                                     / (1 + param('calibration_ridge'))) END AS unmodelled_share
FROM residuals GROUP BY fit_id;

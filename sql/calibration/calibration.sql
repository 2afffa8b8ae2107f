-- Layer 3f: the walk-forward fit. Where realized liquidations exist, the ensemble's parameters are
-- fitted to them: the leverage mix, how much more the levered side liquidates than the other (the side
-- split's sensitivity), the models' weights, the share of a slowly crossed level that stop-losses take
-- (against a level blown through, which liquidates whole), and the unmodelled share. Each fit uses the
-- days before its refit date only (calibration_train_days) and is used for the next
-- calibration_refit_days only: no fit ever reads realized data from the period it is used in. Without
-- realized data there is no fit and the defaults stay (sql/seeds/model_parameters.csv).
--
-- Switches: calibration_fit = 0 fits nothing (no fits: every default stands, as without realized data);
-- a share set to 0 is off and the fit leaves it off: unmodelled_share = 0 (no unmodelled part),
-- stop_loss_share = 0 (no stops: the only candidate is 0); a model weight set to 0 leaves the model out
-- of the ensemble and of the fit (ensemble_base). The fade's half-life is not fitted (see fade below).
--
-- What is fitted: the volume the ensemble predicts for a window is linear in its pieces' volumes, so
-- the crossed volume of each group of pieces (model x levered/other side x leverage tier) is a
-- regressor of the realized volume (1-hour windows: the shortest horizon). The ensemble's weight on a
-- group is a_model x s_role x q_tier, fitted by non-negative least squares in three stages: the tiers
-- q (for each candidate stop-loss share: the least error wins), then the two side roles s with q
-- fixed, then the models a with q and s fixed. Each stage is pulled towards a common
-- scale by a ridge (calibration_ridge), so a tier that no window crossed keeps the scale of the rest.
-- The regressors are valued with the open-interest falls but not the models' own netting
-- (sql/lifecycle/positions.sql): a first-order stand-in that keeps the fit one pass. A level the path blew
-- through counts whole, as in the backtest (sql/backtest/baselines.sql): the fit fits what is scored.
--
-- Where the realized liquidations carry prices, an observation is a window, side and cell of the price
-- axis (calibration_cell_share wide), not only a window and side. Location is what tells the leverage
-- tiers apart: a 100x level sits about 1 % from its entry and a 10x one about 10 %, but in a window
-- every big move crosses both, so per window their volumes rise and fall together and the fit cannot
-- split them. Measured on simulator seeds 7 and 8 (issue 10): per window, the fitted mix moved away
-- from the traders' one on seed 7; per 0.8 % cell it moved towards it. Realized volume without prices
-- (aggregated per period) keeps one cell per window.

-- Non-negative least squares, min |X w - y|^2 + alpha |w - center|^2 with w >= 0, from the Gram matrix
-- g = X'X and b = X'y, by multiplicative updates (Lee & Seung 2001, "Algorithms for non-negative
-- matrix factorization"; with X, y >= 0 every update keeps w >= 0 and lowers the error):
--     w_i <- w_i (b_i + alpha center) / ((g w)_i + alpha w_i)
CREATE OR REPLACE MACRO nnls_step(g, b, w, alpha, center) AS
    list_transform(w, lambda wi, i: coalesce(wi * (b[i] + alpha * center) / nullif(list_dot_product(g[i], w) + alpha * wi, 0), 0));

-- The problems of one stage, from a design table (problem_id, origin_ts, side, cell, j, x, y): one row each
-- with g, b, the start and ridge centre (the least-squares scale of all features weighed 1) and alpha.
CREATE OR REPLACE MACRO nnls_problems(design) AS TABLE
WITH pairs AS (
    SELECT a.problem_id, a.j, b.j AS k, sum(a.x * b.x) AS g
    FROM query_table(design) a JOIN query_table(design) b USING (problem_id, origin_ts, side, cell) GROUP BY ALL
),
rows AS (SELECT problem_id, j, list(g ORDER BY k) AS g_row FROM pairs GROUP BY ALL),
rhs AS (SELECT problem_id, j, sum(x * y) AS b FROM query_table(design) GROUP BY ALL),
problems AS (
    SELECT problem_id, list(g_row ORDER BY j) AS g, list(b ORDER BY j) AS b
    FROM rows JOIN rhs USING (problem_id, j) GROUP BY ALL
)
SELECT problem_id, g, b,
       coalesce(list_sum(b) / nullif(list_sum(list_transform(g, lambda r: list_sum(r))), 0), 0) AS center,
       param('calibration_ridge') * list_sum(list_transform(g, lambda r, i: r[i])) / len(g) AS alpha
FROM problems;

-- Solve them: a fixed number of updates from the centre, then the training error |X w - y|^2 - |y|^2.
-- The updates are a fold over the step numbers (list_reduce), one expression per problem: the same
-- arithmetic as a recursive CTE of one update per step, without its per-step join (0.055 -> 0.033 s a
-- stage in a day added; identical weights).
CREATE OR REPLACE MACRO nnls(problems) AS TABLE
WITH solve AS (
    SELECT problem_id, g, b,
           list_reduce(range(CASE WHEN alpha > 0 THEN 1000 ELSE 0 END),
                       lambda w, step: nnls_step(g, b, w, alpha, center), list_transform(b, lambda x: center)) AS w
    FROM query_table(problems)
)
SELECT problem_id, w, list_dot_product(w, list_transform(g, lambda r: list_dot_product(r, w))) - 2 * list_dot_product(w, b)
           AS error
FROM solve;

-- The fit's windows: the shortest horizon's.
CREATE OR REPLACE TABLE calibration_windows AS
SELECT symbol, horizon, origin_ts, end_ts FROM backtest_windows
WHERE realized_known AND horizon_s = (SELECT min(horizon_s) FROM backtest_horizons);

-- Whether a symbol's realized liquidations all have a price (then the fit compares cells of the price
-- axis), and the cell of a price bucket: log-spaced, so a cell is the same share of price at any price.
CREATE OR REPLACE TABLE calibration_by_price AS
SELECT symbol, bool_and(bucket_index IS NOT NULL) AND param('calibration_cell_share') > 0 AS by_price
FROM backtest_realized GROUP BY symbol;
CREATE OR REPLACE MACRO calibration_cell(by_price, bucket_index) AS
    CASE WHEN by_price THEN floor(ln((bucket_index + 0.5) * param('price_bucket_usd'))
                                  / ln(1 + param('calibration_cell_share')))::BIGINT
         ELSE 0 END;

-- What was realized in each window, per side and cell (cell 0 and volume 0 for a window and side
-- with nothing realized: an observation too, where no prices split the windows).
CREATE OR REPLACE TABLE calibration_observations AS
SELECT w.symbol, w.origin_ts, w.end_ts, s.side, coalesce(calibration_cell(b.by_price, r.bucket_index), 0) AS cell,
       coalesce(sum(r.volume_usd), 0) AS realized_usd
FROM calibration_windows w CROSS JOIN (VALUES ('long'), ('short')) s(side)
LEFT JOIN calibration_by_price b ON b.symbol = w.symbol
LEFT JOIN backtest_realized r ON r.symbol = w.symbol AND r.horizon = w.horizon AND r.origin_ts = w.origin_ts AND r.side = s.side
GROUP BY ALL;

-- The fade: one half-life, fade_half_life_h, for every model and time; not fitted. The ensemble's pieces
-- are its components' pieces reweighted, churn openings included, and the components reopen what fades
-- at fade_half_life_h (oi_steps.churn_usd, sql/models/inputs.sql): levels that faded at another rate
-- than the churn that replaces them would drift against open interest (issue 28: at a fitted 720 h
-- against the churn's 48 h, the ensemble's alive volume went from 0.16x to 0.45x open interest in five
-- days with its scale held). Reopening the churn at the fitted half-life instead would need openings of
-- the ensemble's own, and regressors recomputed for each candidate with its churn at that rate (the fit
-- compared the candidates on pieces whose churn was opened at the default). Nor did fitting it pay: on
-- three months of real BTCUSDT the fits' mean out-of-sample Pearson was 0.850 with it and 0.843 without
-- (0.852 unfitted), the backtest's 1-hour volume Pearson 0.808 / 0.602 (longs / shorts) with it and
-- 0.817 / 0.671 without, and the 85 fits chose 12 h 22 times, 48 h 24, 7 days 11 and 30 days 28,
-- changing from one day to the next 31 times. So the fit values every level with the fade the
-- lifecycle applies (sql/lifecycle/positions.sql), and churn and fade share the one half-life.

-- The candidate stop-loss shares, and the default: from none (a level crossed slowly liquidates as much
-- as one blown through) to 95 % (crossed slowly, a level loses almost all of it to stops). The share
-- sets how much more a blown-through level liquidates than one crossed slowly: 1 / (1 - share). With
-- stop_loss_share = 0 (stops switched off) the only candidate is 0.
CREATE OR REPLACE TABLE stop_candidates AS
SELECT DISTINCT stop_loss_share FROM (VALUES (0.0), (0.8), (0.95), (param('stop_loss_share'))) t(stop_loss_share)
WHERE param('stop_loss_share') > 0 OR stop_loss_share = 0;

-- The ensemble's default weight per model (sql/models/ensemble.sql explains it): the share of its
-- weight, per unit of the model's volume, so each model opens weight x the models' mean volume.
-- Measured on the first day of openings only (no look-ahead beyond it; no realized data).
CREATE OR REPLACE TABLE ensemble_base AS
WITH first_day AS (SELECT symbol, min(created_ts) + INTERVAL 1 DAY AS until FROM pieces GROUP BY symbol),
totals AS (   -- (an incremental build's pieces hold the ensemble's earlier ones: sql/models/ensemble.sql)
    SELECT p.symbol, p.model, sum(p.volume_usd) AS opened_usd, param('weight_' || p.model) AS weight
    FROM pieces p JOIN first_day f ON p.symbol = f.symbol AND p.created_ts < f.until
    WHERE p.model <> 'ensemble' GROUP BY ALL
)
SELECT symbol, model, weight / sum(weight) OVER (PARTITION BY symbol)
                      * avg(opened_usd) OVER (PARTITION BY symbol) / opened_usd AS factor
FROM totals WHERE opened_usd > 0 AND weight > 0;

-- Regressors: per window, side and cell, the volume of each group of the ensemble's default pieces that
-- was alive at the window's start and whose liquidation price the path crossed in it (valued at the
-- start with the open-interest falls and the fade since the piece opened; a level the path blew through
-- whole).
-- Persisted: a window that ends before rebuild_from() read nothing after it (its pieces opened by its
-- start, its crossings came from bars that opened before its end), so a build computes only the windows
-- ending from then on.
CREATE TABLE IF NOT EXISTS calibration_regressors (
    symbol VARCHAR, origin_ts TIMESTAMP, side VARCHAR, cell BIGINT, model VARCHAR,
    side_role VARCHAR, leverage INTEGER, slow_usd DOUBLE, blown_usd DOUBLE);
DELETE FROM calibration_regressors
WHERE origin_ts >= rebuild_from() - to_seconds((SELECT min(horizon_s) FROM backtest_horizons));
INSERT INTO calibration_regressors BY NAME
WITH crossed AS (
    SELECT p.model, p.symbol, p.side, p.side_role, p.leverage, p.created_ts, o.origin_ts,
           calibration_cell(b.by_price, floor(p.liquidation_price / param('price_bucket_usd'))) AS cell,
           c.blown_through, p.volume_usd * e.factor AS volume_usd
    FROM pieces p
    JOIN ensemble_base e USING (symbol, model)
    JOIN (  -- each crossing with the window that holds it (sql/25)
        SELECT c.*, consumption_window_origin(h.horizon_s, c.consumed_ts) AS origin_ts
        FROM crossings c, (SELECT min(horizon_s) AS horizon_s FROM backtest_horizons) h
    ) c USING (symbol, side, created_ts, liquidation_price)
    JOIN calibration_windows o ON o.symbol = p.symbol AND o.origin_ts = c.origin_ts
        AND o.end_ts >= rebuild_from() AND p.created_ts <= o.origin_ts
    LEFT JOIN calibration_by_price b ON b.symbol = p.symbol
),
valued AS (
    SELECT c.*, exp(coalesce(fo.log_fall_scale, 0) - coalesce(fc.log_fall_scale, 0)) AS fall_scale
    FROM crossed c
    ASOF LEFT JOIN oi_falls fc ON fc.symbol = c.symbol AND c.created_ts >= fc.ts
    ASOF LEFT JOIN oi_falls fo ON fo.symbol = c.symbol AND c.origin_ts >= fo.ts
),
faded AS (
    SELECT v.*,
           v.volume_usd * v.fall_scale
               * exp(-ln(2) * epoch(v.origin_ts - v.created_ts) / (3600 * param('fade_half_life_h'))) AS x
    FROM valued v
)
SELECT symbol, origin_ts, side, cell, model, side_role, leverage,
       coalesce(sum(x) FILTER (WHERE NOT blown_through), 0) AS slow_usd,
       coalesce(sum(x) FILTER (WHERE blown_through), 0) AS blown_usd
FROM faded GROUP BY ALL;

-- A group's liquidated volume under a stop-loss share: the pieces hold (1 - default share) of what was
-- opened; a level crossed slowly liquidates (1 - share) of it, one blown through all of it.
CREATE OR REPLACE MACRO crossed_volume(slow_usd, blown_usd, stop_share) AS
    (slow_usd * (1 - stop_share) + blown_usd) / (1 - param('stop_loss_share'));

-- Each symbol's span of calibration windows, and when its first fit applies: the first refit date (every
-- calibration_refit_days from the UTC day after the first window's) at or after backtest_warmup_s from that
-- day, when the backtest starts scoring (sql/backtest/windows.sql), so no scored window is unfitted. It is
-- known from the first window on: sql/models/ensemble.sql moves the ensemble's scale towards the
-- realized volume from then until its first fit, so that the fit does not step it.
CREATE OR REPLACE TABLE calibration_span AS
SELECT symbol, first_ts, last_ts,
       time_bucket(INTERVAL 1 DAY, first_ts)
           + to_seconds(refit_s * greatest(1, ceil(param('backtest_warmup_s') / refit_s))::BIGINT) AS first_fit_ts
FROM (SELECT symbol, min(origin_ts) AS first_ts, max(end_ts) AS last_ts,
             86400 * param('calibration_refit_days')::BIGINT AS refit_s
      FROM calibration_observations GROUP BY symbol);

-- The refits: every calibration_refit_days from the first, each trained on the calibration_train_days
-- before it and used until the next. The last one is the fit for what comes after the data (applies_to
-- NULL): the heatmap's latest levels are opened with it. calibration_fit = 0: no fit (the defaults stay).
CREATE OR REPLACE TABLE calibration_fits AS
WITH dates AS (
    SELECT symbol, first_ts, last_ts,
           unnest(generate_series(first_fit_ts, last_ts, to_seconds(86400 * param('calibration_refit_days')::BIGINT)))
               AS applies_from
    FROM calibration_span
)
-- (fit_id counts each symbol's fits in time order, 10000 apart per symbol: it stays the same when data is added)
SELECT row_number() OVER (PARTITION BY symbol ORDER BY applies_from) + 10000 * (dense_rank() OVER (ORDER BY symbol) - 1)
           AS fit_id, symbol,
       greatest(first_ts, applies_from - to_seconds(86400 * param('calibration_train_days')::BIGINT)) AS train_from,
       applies_from AS train_to, applies_from,
       CASE WHEN applies_from < last_ts
            THEN least(last_ts, applies_from + to_seconds(86400 * param('calibration_refit_days')::BIGINT)) END AS applies_to
FROM dates
WHERE param('calibration_fit') <> 0;

-- The fits this build trains: those whose training windows end after rebuild_from() (the others were
-- trained on what the previous build saw, and their results are kept: the tables below are persisted).
-- (calibration_fade_fit records the half-life each fit valued the levels with: fade_half_life_h, not fitted)
CREATE TABLE IF NOT EXISTS calibration_fade_fit (fit_id BIGINT, half_life_h DOUBLE);
CREATE TABLE IF NOT EXISTS calibration_tier_fit (
    fit_id BIGINT, stop_loss_share DOUBLE, tier_weights DOUBLE[], error DOUBLE);
CREATE TABLE IF NOT EXISTS calibration_role_fit (fit_id BIGINT, role_weights DOUBLE[]);
CREATE TABLE IF NOT EXISTS calibration_model_fit (fit_id BIGINT, model_weights DOUBLE[]);
CREATE TABLE IF NOT EXISTS calibration_unmodelled_fit (fit_id BIGINT, unmodelled_share DOUBLE);
CREATE OR REPLACE TABLE calibration_kept_fits AS
SELECT fit_id FROM calibration_fits
WHERE train_to <= rebuild_from() AND fit_id IN (SELECT fit_id FROM calibration_unmodelled_fit);
CREATE OR REPLACE TABLE calibration_refits AS SELECT fit_id FROM calibration_fits ANTI JOIN calibration_kept_fits USING (fit_id);
DELETE FROM calibration_fade_fit WHERE fit_id NOT IN (SELECT fit_id FROM calibration_kept_fits);
DELETE FROM calibration_tier_fit WHERE fit_id NOT IN (SELECT fit_id FROM calibration_kept_fits);
DELETE FROM calibration_role_fit WHERE fit_id NOT IN (SELECT fit_id FROM calibration_kept_fits);
DELETE FROM calibration_model_fit WHERE fit_id NOT IN (SELECT fit_id FROM calibration_kept_fits);
DELETE FROM calibration_unmodelled_fit WHERE fit_id NOT IN (SELECT fit_id FROM calibration_kept_fits);

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

-- What each fit says, in the defaults' terms, one row per fit and parameter, with its window and score
-- (fade_half_life_h is not fitted: the one half-life of churn and fade, above):
--   leverage_share_<L>x      the fitted leverage mix: the default tier weight x q, as shares;
--   levered_side_ratio       s_levered / s_other: how much more of the levered side's crossed levels is
--                            liquidated (1: the signal's side split adds nothing);
--   weight_<model>           each model's share of the ensemble's volume;
--   stop_loss_share          the share of a level that stops close when price crosses it slowly (a level
--                            blown through liquidates whole): 1 / (1 - share) is how much more a fast
--                            crossing liquidates than a slow one;
--   volume_scale             the fitted volume over the unfitted ensemble's, on the training windows;
--   unmodelled_share         the share of open interest x the share of price crossed that is liquidated
--                            beyond the levels (stage 4).
CREATE OR REPLACE TABLE fitted_parameters AS
WITH values AS (
    SELECT t.fit_id, 'leverage_share_' || l.leverage || 'x' AS parameter,
           l.weight * t.tier_weights[f.j] / sum(l.weight * t.tier_weights[f.j]) OVER (PARTITION BY t.fit_id) AS value
    FROM calibration_tier_fit t CROSS JOIN leverage_tiers l
    JOIN calibration_features f ON f.stage = 'tier' AND f.feature = l.leverage::VARCHAR
    UNION ALL
    SELECT fit_id, 'levered_side_ratio', role_weights[1] / nullif(role_weights[2], 0) FROM calibration_role_fit
    UNION ALL
    SELECT a.fit_id, 'weight_' || f.feature,
           a.model_weights[f.j] * param('weight_' || f.feature)
           / sum(a.model_weights[f.j] * param('weight_' || f.feature)) OVER (PARTITION BY a.fit_id)
    FROM calibration_model_fit a JOIN calibration_features f ON f.stage = 'model'
    UNION ALL
    SELECT fit_id, 'stop_loss_share', stop_loss_share FROM calibration_tier_fit
    UNION ALL
    SELECT fit_id, 'volume_scale', kept_share FROM calibration_scores
    UNION ALL
    SELECT fit_id, 'unmodelled_share', unmodelled_share FROM calibration_unmodelled_fit
)
SELECT f.symbol, f.fit_id, f.train_from, f.train_to, f.applies_from, f.applies_to, v.parameter, v.value,
       s.train_windows, s.train_pearson, s.test_pearson, s.default_test_pearson
FROM values v JOIN calibration_fits f USING (fit_id) JOIN calibration_scores s USING (fit_id)
ORDER BY f.symbol, f.applies_from, v.parameter;

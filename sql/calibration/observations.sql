-- Calibration layer: the walk-forward fit. Where realized liquidations exist, the ensemble's parameters are
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

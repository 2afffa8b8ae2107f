-- The calibration layer's schedule: when each walk-forward fit is trained and applies, and which fits an
-- incremental build keeps (see calibration/observations.sql).

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

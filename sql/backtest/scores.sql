-- Backtest layer: the backtest's scores, from forecast_levels (every predictor's crossed levels, frozen at
-- each window's start) and the realized liquidations of each window (sql/backtest/baselines.sql). Models and
-- baselines go through the same SQL. Only windows after the warm-up are scored; what is fitted to
-- realized data (the nearest_buckets profile, the precision scale) uses earlier windows only.

-- Predicted next to realized volume in every scored window, zeros included.
CREATE OR REPLACE TABLE backtest_series AS
WITH predictors AS (
    SELECT DISTINCT model, symbol FROM forecast_levels
    UNION SELECT DISTINCT model, symbol FROM positions
    UNION SELECT b.model, w.symbol FROM backtest_baselines b, (SELECT DISTINCT symbol FROM backtest_windows) w
),
predicted AS (SELECT model, symbol, horizon, origin_ts, side, sum(volume_usd) AS usd FROM forecast_levels GROUP BY ALL),
realized AS (SELECT symbol, horizon, origin_ts, side, sum(volume_usd) AS usd FROM backtest_realized GROUP BY ALL)
SELECT m.model, w.symbol, w.horizon, w.origin_ts AS ts, s.side,
       coalesce(p.usd, 0) AS predicted_usd, coalesce(r.usd, 0) AS realized_usd
FROM backtest_windows w JOIN predictors m USING (symbol) CROSS JOIN (VALUES ('long'), ('short')) s(side)
LEFT JOIN predicted p ON p.model = m.model AND p.symbol = w.symbol AND p.horizon = w.horizon
    AND p.origin_ts = w.origin_ts AND p.side = s.side
LEFT JOIN realized r ON r.symbol = w.symbol AND r.horizon = w.horizon AND r.origin_ts = w.origin_ts AND r.side = s.side
WHERE w.scored
ORDER BY m.model, w.symbol, w.horizon, w.origin_ts, s.side;

-- Location, where realized liquidations carry prices: within the buckets the path crossed, each
-- predictor's density q(b) = (1 - e) x its crossed volume in b / its crossed volume in the window
-- + e x the crossed share of b / the crossed length (e = location_floor_share, so that no bucket is
-- impossible; a predictor with nothing crossed is all floor). Its log score is the realized volume-
-- weighted mean of log2 q(b); the gain is that minus nearest_buckets' (distance from the price only),
-- in bits per liquidated USD: positive only when the levels say more than distance does.
CREATE OR REPLACE TABLE backtest_log_scores AS
WITH crossed AS (
    SELECT c.*, sum(c.crossed_share) OVER (PARTITION BY c.symbol, c.horizon, c.origin_ts, c.side) AS crossed_length
    FROM backtest_crossed_buckets c JOIN backtest_windows w USING (symbol, horizon, origin_ts) WHERE w.scored
),
hits AS (             -- realized volume that fell in a crossed bucket
    SELECT c.*, r.volume_usd AS realized_usd
    FROM crossed c JOIN backtest_realized r USING (symbol, horizon, origin_ts, side, bucket_index)
),
predictor_totals AS (
    SELECT model, symbol, horizon, origin_ts, side, sum(volume_usd) AS total_usd FROM forecast_levels GROUP BY ALL
)
SELECT s.model, h.symbol, h.side, h.horizon, h.origin_ts, h.realized_usd,
       h.realized_usd * log2((1 - param('location_floor_share')) * coalesce(f.volume_usd / t.total_usd, 0)
                             + CASE WHEN t.total_usd > 0 THEN param('location_floor_share') ELSE 1 END
                               * h.crossed_share / h.crossed_length) AS bits
FROM hits h JOIN (SELECT DISTINCT model, symbol FROM backtest_series) s USING (symbol)
LEFT JOIN predictor_totals t ON t.model = s.model AND t.symbol = h.symbol AND t.horizon = h.horizon
    AND t.origin_ts = h.origin_ts AND t.side = h.side
LEFT JOIN forecast_levels f ON f.model = s.model AND f.symbol = h.symbol AND f.horizon = h.horizon
    AND f.origin_ts = h.origin_ts AND f.side = h.side AND f.bucket_index = h.bucket_index;

-- Precision: how much of what a predictor said was liquidated was, bucket by bucket, capping each match
-- at the realized volume in that bucket (sum of min(predicted, realized) / sum of predicted). So that
-- predicting little cannot win, each predictor is first scaled to the realized volume of the windows
-- before (walk-forward: realized priced total / predicted total over all earlier windows).
CREATE OR REPLACE TABLE backtest_matches AS
WITH predictor_totals AS (
    SELECT model, symbol, horizon, origin_ts, side, sum(volume_usd) AS total_usd FROM forecast_levels GROUP BY ALL
),
window_totals AS (
    SELECT w.symbol, w.horizon, w.origin_ts, w.scored, s.side, m.model,
           coalesce((SELECT sum(volume_usd) FROM backtest_realized r WHERE r.symbol = w.symbol AND r.horizon = w.horizon
                     AND r.origin_ts = w.origin_ts AND r.side = s.side AND r.bucket_index IS NOT NULL), 0) AS realized_usd,
           coalesce(t.total_usd, 0) AS predicted_usd
    FROM backtest_windows w CROSS JOIN (VALUES ('long'), ('short')) s(side)
    JOIN (SELECT DISTINCT model, symbol FROM backtest_series) m USING (symbol)
    LEFT JOIN predictor_totals t ON t.model = m.model AND t.symbol = w.symbol AND t.horizon = w.horizon
        AND t.origin_ts = w.origin_ts AND t.side = s.side
    WHERE w.symbol IN (SELECT symbol FROM realized_liquidations WHERE price IS NOT NULL)
),
scale AS (
    SELECT *, sum(realized_usd) OVER earlier / nullif(sum(predicted_usd) OVER earlier, 0) AS scale
    FROM window_totals
    WINDOW earlier AS (PARTITION BY model, symbol, horizon, side ORDER BY origin_ts
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT s.model, s.symbol, s.side, s.horizon, s.origin_ts, s.scale * f.volume_usd AS predicted_usd,
       least(s.scale * f.volume_usd, coalesce(r.volume_usd, 0)) AS matched_usd
FROM scale s JOIN forecast_levels f USING (model, symbol, horizon, origin_ts, side)
LEFT JOIN backtest_realized r USING (symbol, horizon, origin_ts, side, bucket_index)
WHERE s.scored AND s.scale > 0;

-- The series with the ranks of both volumes, for Spearman (Pearson on ranks, ties given their average rank).
CREATE OR REPLACE TABLE backtest_ranked AS
SELECT *, (rank() OVER wp + cume_dist() OVER wp * count(*) OVER w) / 2 AS p_rank,
          (rank() OVER wr + cume_dist() OVER wr * count(*) OVER w) / 2 AS r_rank
FROM backtest_series
WINDOW w AS (PARTITION BY model, symbol, side, horizon),
       wp AS (PARTITION BY model, symbol, side, horizon ORDER BY predicted_usd),
       wr AS (PARTITION BY model, symbol, side, horizon ORDER BY realized_usd);

CREATE OR REPLACE TABLE backtest_scores AS
WITH
volume AS (
    SELECT model, symbol, side, horizon, 'volume_pearson' AS metric, corr(predicted_usd, realized_usd) AS value,
           count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts
    FROM backtest_ranked GROUP BY ALL
    UNION ALL
    SELECT model, symbol, side, horizon, 'volume_spearman', corr(p_rank, r_rank), count(*), min(ts), max(ts)
    FROM backtest_ranked GROUP BY ALL
    UNION ALL         -- predicted total / realized total: 1 would be right
    SELECT model, symbol, side, horizon, 'calibration', sum(predicted_usd) / nullif(sum(realized_usd), 0),
           count(*), min(ts), max(ts)
    FROM backtest_ranked GROUP BY ALL
),
log_totals AS (
    SELECT model, symbol, side, horizon, sum(bits) AS bits, sum(realized_usd) AS realized_usd,
           count(DISTINCT origin_ts) AS n, min(origin_ts) AS first_ts, max(origin_ts) AS last_ts
    FROM backtest_log_scores GROUP BY ALL
),
location AS (
    SELECT l.model, l.symbol, l.side, l.horizon, 'location_gain_bits', (l.bits - d.bits) / l.realized_usd,
           l.n, l.first_ts, l.last_ts
    FROM log_totals l JOIN log_totals d ON d.model = 'nearest_buckets' AND d.symbol = l.symbol AND d.side = l.side
        AND d.horizon = l.horizon
),
precision_ AS (      -- a row for every predictor, empty where nothing could be scaled or matched
    SELECT k.model, k.symbol, k.side, k.horizon, 'precision', sum(m.matched_usd) / nullif(sum(m.predicted_usd), 0),
           count(DISTINCT m.origin_ts), min(m.origin_ts), max(m.origin_ts)
    FROM (SELECT DISTINCT model, symbol, side, horizon FROM backtest_series
          WHERE symbol IN (SELECT symbol FROM realized_liquidations WHERE price IS NOT NULL)) k
    LEFT JOIN backtest_matches m USING (model, symbol, side, horizon)
    GROUP BY ALL
)
SELECT model, symbol, side, horizon, h.horizon_s, metric,
       CASE WHEN NOT isnan(value) THEN value END AS value,  -- no variance, nothing realized: no score
       n AS n_periods, first_ts AS scored_from, last_ts AS scored_to,
       CASE WHEN model IN (SELECT model FROM forecast_predictors) AND metric LIKE 'volume%'
                THEN 'regression on the windows that ended before each day (expanding, refitted daily)'
            WHEN model = 'nearest_buckets' OR metric = 'location_gain_bits'
                THEN 'nearest_buckets: realized liquidations of the windows before each one (expanding)'
            WHEN metric = 'precision' THEN 'volume scale: realized / predicted over the windows before each one (expanding)'
            ELSE 'nothing fitted to realized data' END
       || CASE WHEN metric = 'precision' AND model = 'nearest_buckets' THEN '; volume scale likewise' ELSE '' END
           AS fitted_on
FROM (SELECT * FROM volume UNION ALL SELECT * FROM location UNION ALL SELECT * FROM precision_)
JOIN backtest_horizons h USING (horizon)
ORDER BY symbol, horizon_s, side, metric, model;

-- Intervals. Hourly liquidation volumes are heavy-tailed and the hours of a day are not independent, so
-- a skill's interval comes from resampling whole UTC days (a day-block bootstrap): backtest_resamples
-- draws of as many days as were scored, with replacement; in each, every predictor is scored again from
-- per-day sums (the correlations as weighted Pearson, Spearman on the ranks of the whole sample; location
-- and precision as ratios of per-day sums), and the skill is the model's score minus the best baseline's
-- in that same draw. skill_low and skill_high are the 5 % and 95 % quantiles: a skill whose interval
-- holds 0 is no skill. The draws are a hash of (draw, position), so a build gives the same intervals.
CREATE OR REPLACE TABLE backtest_day_sums AS
WITH correlations AS (
    SELECT model, symbol, side, horizon, time_bucket(INTERVAL 1 DAY, ts) AS day, m.metric,
           count(*) AS n, sum(x) AS sx, sum(y) AS sy, sum(x * x) AS sxx, sum(y * y) AS syy, sum(x * y) AS sxy
    FROM backtest_ranked CROSS JOIN LATERAL (VALUES ('volume_pearson', predicted_usd, realized_usd),
                                           ('volume_spearman', p_rank, r_rank)) m(metric, x, y)
    GROUP BY ALL
),
ratios AS (         -- location: bits above nearest_buckets' / liquidated USD; precision: matched / predicted USD
    SELECT l.model, l.symbol, l.side, l.horizon, time_bucket(INTERVAL 1 DAY, l.origin_ts) AS day,
           'location_gain_bits' AS metric, sum(l.bits) - sum(d.bits) AS numerator, sum(l.realized_usd) AS denominator
    FROM backtest_log_scores l JOIN backtest_log_scores d ON d.model = 'nearest_buckets' AND d.symbol = l.symbol
        AND d.side = l.side AND d.horizon = l.horizon AND d.origin_ts = l.origin_ts
    GROUP BY ALL
    UNION ALL
    SELECT model, symbol, side, horizon, time_bucket(INTERVAL 1 DAY, origin_ts), 'precision', sum(matched_usd), sum(predicted_usd)
    FROM backtest_matches GROUP BY ALL
)
SELECT model, symbol, side, horizon, day, metric, n, sx, sy, sxx, syy, sxy, NULL AS numerator, NULL AS denominator
FROM correlations
UNION ALL
SELECT model, symbol, side, horizon, day, metric, NULL, NULL, NULL, NULL, NULL, NULL, numerator, denominator FROM ratios;

CREATE OR REPLACE TABLE backtest_resample_skill AS
WITH days AS (
    SELECT symbol, horizon, list(DISTINCT day ORDER BY day) AS days FROM backtest_day_sums GROUP BY ALL
),
draws AS (          -- each draw's days and how often each was drawn (range() as a list, not a table function:
                    -- users of the .duckdb file have param() as a subquery, which a table function refuses)
    SELECT symbol, horizon, draw, days[1 + (hash(draw, position, symbol, horizon) % len(days))::BIGINT] AS day,
           count(*) AS weight
    FROM (SELECT *, unnest(range(len(days))) AS position
          FROM (SELECT *, unnest(range(param('backtest_resamples')::BIGINT)) AS draw FROM days))
    GROUP BY 1, 2, 3, 4
),
scores AS (
    SELECT s.model, s.symbol, s.side, s.horizon, s.metric, d.draw,
           CASE WHEN s.metric LIKE 'volume%'
                THEN (sum(d.weight * s.n) * sum(d.weight * s.sxy) - sum(d.weight * s.sx) * sum(d.weight * s.sy))
                     / nullif(sqrt(greatest(0, sum(d.weight * s.n) * sum(d.weight * s.sxx) - sum(d.weight * s.sx) ** 2))
                              * sqrt(greatest(0, sum(d.weight * s.n) * sum(d.weight * s.syy) - sum(d.weight * s.sy) ** 2)), 0)
                ELSE sum(d.weight * s.numerator) / nullif(sum(d.weight * s.denominator), 0) END AS value
    FROM backtest_day_sums s JOIN draws d USING (symbol, horizon, day)
    GROUP BY 1, 2, 3, 4, 5, 6
),
best AS (
    SELECT symbol, side, horizon, metric, draw, max(value) AS baseline_value
    FROM scores WHERE model IN (SELECT model FROM backtest_baselines) GROUP BY ALL
)
SELECT s.model, s.symbol, s.side, s.horizon, s.metric, s.draw, s.value - b.baseline_value AS skill
FROM scores s JOIN best b USING (symbol, side, horizon, metric, draw)
WHERE s.model NOT IN (SELECT model FROM backtest_baselines);

-- Skill: each model's score minus the best baseline's on the same symbol, side, horizon and metric
-- (calibration has no "better" direction and is left out), with its 90 % interval from the day-block
-- bootstrap above. "beats" only where the whole interval is above 0.
CREATE OR REPLACE TABLE backtest_skill AS
WITH best AS (
    -- baselines that tie (naive_move and price_move place levels alike) are named in alphabetical order
    SELECT symbol, side, horizon, metric, first(model ORDER BY round(value, 9) DESC, model) AS best_baseline,
           max(value) AS baseline_value
    FROM backtest_scores WHERE model IN (SELECT model FROM backtest_baselines) AND value IS NOT NULL
      AND metric <> 'calibration'
    GROUP BY ALL
),
intervals AS (
    SELECT model, symbol, side, horizon, metric, quantile_cont(skill, 0.05) AS skill_low,
           quantile_cont(skill, 0.95) AS skill_high
    FROM backtest_resample_skill GROUP BY ALL
)
SELECT s.model, s.symbol, s.side, s.horizon, s.horizon_s, s.metric, s.value, b.best_baseline, b.baseline_value,
       s.value - b.baseline_value AS skill, i.skill_low, i.skill_high,
       -- (each number rounded and + 0.0 first: a skill of -1e-12, sums in another order, reads +0.000, not -0.000)
       CASE WHEN round(i.skill_low, 8) > 0   -- (8 digits: as exported)
                THEN 'beats ' || b.best_baseline || ' by ' || printf('%.3f', round(s.value - b.baseline_value, 9) + 0.0)
                     || printf(' [%.3f, %.3f]', round(i.skill_low, 9) + 0.0, round(i.skill_high, 9) + 0.0)
            WHEN round(i.skill_high, 8) < 0
                THEN 'worse than ' || b.best_baseline || ' (' || printf('%+.3f', round(s.value - b.baseline_value, 9) + 0.0)
                     || printf(' [%+.3f, %+.3f]', round(i.skill_low, 9) + 0.0, round(i.skill_high, 9) + 0.0) || ')'
            ELSE 'no better than ' || b.best_baseline || ' (' || printf('%+.3f', round(s.value - b.baseline_value, 9) + 0.0)
                 || coalesce(printf(' [%+.3f, %+.3f]', round(i.skill_low, 9) + 0.0, round(i.skill_high, 9) + 0.0), '') || ')' END AS verdict,
       s.n_periods, s.scored_from, s.scored_to
FROM backtest_scores s JOIN best b USING (symbol, side, horizon, metric)
LEFT JOIN intervals i USING (model, symbol, side, horizon, metric)
WHERE s.model NOT IN (SELECT model FROM backtest_baselines) AND s.value IS NOT NULL
ORDER BY s.symbol, s.horizon_s, s.metric, s.side, s.model;

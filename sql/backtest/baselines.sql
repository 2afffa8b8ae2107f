-- Backtest layer: the backtest's forecasts. A heatmap claims two things, and both are tested as forecasts:
--   volume:   if price follows a path, about the alive levels it crosses are liquidated;
--   location: liquidations happen where the levels are, more than distance from the price explains.
-- At each forecast origin t (every multiple of the horizon h, UTC) the levels are frozen as they were
-- at t; the realized trigger path in (t, t + h] then says which of them were crossed. Models and
-- position-free baselines are turned into the same thing, "crossed levels" (volume per price bucket
-- that the path crossed), and scored by the same SQL (sql/backtest/scores.sql).

-- The windows, crossed buckets and realized volumes are in sql/backtest/windows.sql.

-- Which baselines there are; every other predictor in forecast_levels is a model.
CREATE OR REPLACE TABLE backtest_baselines AS
SELECT * FROM (VALUES
    ('naive_move', 'open interest x the adverse move: open interest spread evenly over price, so the volume crossed '
                   || 'is open interest x (price at t - lowest low) / price for longs (highest high for shorts)'),
    ('price_move', 'the adverse move alone, without open interest: one unit per price bucket the path crossed '
                   || '(a level in every bucket, everywhere, always)'),
    ('breakout', 'open interest x how far the path breaks the range of the 24 hours before t: open interest spread '
                 || 'evenly over the prices beyond the prior low (longs) or high (shorts)'),
    ('nearest_buckets', 'distance only: open interest x, for each distance (in price buckets) from the price, the '
                        || 'volume liquidated there per USD of open interest whose path crossed it, in the windows '
                        || 'before t (walk-forward, expanding)'),
    ('baseline_blend', 'the position-free terms (naive_move, breakout, recent volatility, recent realized liquidations, '
                       || 'funding) blended by a regression fitted walk-forward (sql/forecast/forecast.sql): the same as '
                       || 'forecast_without_levels'),
    ('shuffled', 'the ensemble''s levels from another day (half the span away, wrapping round), moved to the '
                 || 'price at t: the same shape of levels at the wrong time')
) t(model, description);

-- Every predictor's crossed levels: volume per window, side and price bucket, frozen at t.
--   models:    positions alive at t (opened at or before t, not yet consumed) whose exact liquidation
--              price the path crossed in (t, t + h], valued at the scale of t, and whole where the
--              path blew through it (its stops failed: sql/models/pieces.sql; at the stop-loss share of
--              the fit in force when it opened, for the ensemble); the ensemble adds its unmodelled
--              part, a share of open interest x the share of price crossed in each bucket;
--   baselines: their volume per bucket times the crossed share of the bucket.
-- Persisted: a window that ends before rebuild_from() read nothing after it, so a build computes the
-- windows ending from then on, and shuffled (whose partner window depends on the whole span) whole.
CREATE TABLE IF NOT EXISTS forecast_levels (
    model VARCHAR, symbol VARCHAR, horizon VARCHAR, origin_ts TIMESTAMP, side VARCHAR, bucket_index BIGINT,
    volume_usd DOUBLE);
DELETE FROM forecast_levels f USING backtest_horizons h
WHERE f.horizon = h.horizon AND (f.model = 'shuffled' OR f.origin_ts + to_seconds(h.horizon_s) >= rebuild_from());
INSERT INTO forecast_levels BY NAME
WITH recent AS (SELECT * FROM backtest_windows WHERE end_ts >= rebuild_from()),
consumed AS (    -- each consumed position in the window of each horizon that holds its consumption
    -- (those of the windows recomputed: consumed after rebuild_from() - horizon, as those end from rebuild_from() on)
    SELECT p.*, h.horizon, consumption_window_origin(h.horizon_s, p.consumed_ts) AS origin_ts
    FROM positions p CROSS JOIN backtest_horizons h
    WHERE p.consumed_ts > rebuild_from() - to_seconds(h.horizon_s)
),
model_levels AS (
    SELECT c.model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           sum(c.scale_free_volume * exp(g.log_scale)
               * blow_through_factor(c.blown_through, f.stop_loss_share)) AS volume_usd
    FROM consumed c
    JOIN recent w USING (symbol, horizon, origin_ts)
    ASOF JOIN fit_schedule f ON f.model = c.model AND f.symbol = c.symbol AND c.created_ts >= f.from_ts
    JOIN grid_scale g ON g.model = c.model AND g.symbol = c.symbol AND g.side = c.side AND g.end_ts = c.origin_ts
    WHERE c.created_ts <= c.origin_ts
    GROUP BY ALL
),
unmodelled AS (     -- the ensemble's unmodelled part (sql/calibration/), at the share of the fit in force at t
    SELECT 'ensemble' AS model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           f.unmodelled_share * c.move_exposure_usd AS volume_usd
    FROM backtest_crossed_buckets c SEMI JOIN recent USING (symbol, horizon, origin_ts)
    ASOF JOIN fit_schedule f ON f.model = 'ensemble' AND f.symbol = c.symbol AND c.origin_ts >= f.from_ts
),
crossed AS (SELECT c.*, w.price, w.prior_low, w.prior_high, w.open_interest_usd, w.end_ts, w.realized_known
            FROM backtest_crossed_buckets c JOIN backtest_windows w USING (symbol, horizon, origin_ts)),
uniform AS (        -- naive_move, price_move and breakout: even levels over the prices where each applies
    SELECT m.model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           CASE m.model WHEN 'naive_move' THEN c.move_exposure_usd
                        WHEN 'price_move' THEN param('price_bucket_usd') / c.price * (c.crossed_high - c.crossed_low)
                        -- breakout: only the crossed prices beyond the prior 24 hours' range
                        ELSE c.open_interest_usd / c.price * CASE c.side
                            WHEN 'long' THEN greatest(0, least(c.crossed_high, c.prior_low) - c.crossed_low)
                            ELSE greatest(0, c.crossed_high - greatest(c.crossed_low, c.prior_high)) END
           END AS volume_usd
    FROM crossed c CROSS JOIN (VALUES ('naive_move'), ('price_move'), ('breakout')) m(model)
    WHERE c.end_ts >= rebuild_from()
),
history AS (        -- realized volume per distance from the price at t, window by window, for nearest_buckets
    SELECT r.symbol, r.horizon, r.origin_ts, r.side,
           distance_bin(greatest(0, CASE r.side WHEN 'long' THEN w.price_bucket_index - r.bucket_index
                                                ELSE r.bucket_index - w.price_bucket_index END)) AS distance_bin,
           sum(r.volume_usd) AS volume_usd
    FROM backtest_realized r JOIN backtest_windows w USING (symbol, horizon, origin_ts)
    WHERE r.bucket_index IS NOT NULL GROUP BY ALL
),
profile AS (        -- at each crossed bucket, from the windows before t only: realized volume at its distance, and
                    -- open interest x crossed share of the windows whose path crossed that distance; the same
                    -- over all distances, towards which a distance with little history is pulled
    SELECT *, sum(volume_usd) OVER bin AS bin_usd, sum(history_exposure_usd) OVER bin AS bin_exposure_usd,
           sum(volume_usd) OVER all_bins AS all_usd, sum(history_exposure_usd) OVER all_bins AS all_exposure_usd
    FROM (SELECT symbol, horizon, origin_ts, side, distance_bin(distance_buckets) AS distance_bin, bucket_index,
                 crossed_share, open_interest_usd, open_interest_usd * crossed_share AS exposure_usd,
                 -- (a window past the realized data is forecast, but its nothing-realized is no history)
                 CASE WHEN realized_known THEN open_interest_usd * crossed_share ELSE 0 END AS history_exposure_usd,
                 0 AS volume_usd, 0 AS is_event, end_ts
          FROM crossed
          UNION ALL
          SELECT symbol, horizon, origin_ts, side, distance_bin, NULL, NULL, NULL, 0, 0, volume_usd, 1, NULL FROM history)
    WINDOW bin AS (PARTITION BY symbol, horizon, side, distance_bin ORDER BY origin_ts
                   RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL 1 SECOND PRECEDING),
           all_bins AS (PARTITION BY symbol, horizon, side ORDER BY origin_ts
                        RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL 1 SECOND PRECEDING)
),
nearest AS (        -- USD liquidated per USD of open interest that crossed the distance, times today's: the
                    -- bin's rate shrunk to the overall rate with one window's open interest as prior weight
    SELECT 'nearest_buckets' AS model, symbol, horizon, origin_ts, side, bucket_index,
           exposure_usd * (coalesce(bin_usd, 0) + open_interest_usd * all_usd / nullif(all_exposure_usd, 0))
               / (coalesce(bin_exposure_usd, 0) + open_interest_usd) AS volume_usd
    FROM profile WHERE is_event = 0 AND end_ts >= rebuild_from()   -- (the history before them is all read)
),
other_day AS (      -- each window's partner: half the span of whole days away, wrapping round
    SELECT w.symbol, w.horizon, w.origin_ts, w.price_bucket_index, o.origin_ts AS other_ts,
           o.price_bucket_index AS other_price_bucket_index
    FROM (SELECT *, min(origin_ts) OVER s AS first_ts,
                 epoch(max(origin_ts) OVER s - min(origin_ts) OVER s)::BIGINT + horizon_s AS period_s
          FROM backtest_windows WINDOW s AS (PARTITION BY symbol, horizon)) w
    JOIN backtest_windows o ON o.symbol = w.symbol AND o.horizon = w.horizon
        AND o.origin_ts = w.first_ts + to_seconds((epoch(w.origin_ts - w.first_ts)::BIGINT
                                                   + 86400 * greatest(1, w.period_s // 86400 // 2)) % w.period_s)
),
shuffled AS (       -- the ensemble's alive levels at the partner window's start, moved to the price at t
    SELECT 'shuffled' AS model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           CASE c.side WHEN 'long' THEN h.long_usd ELSE h.short_usd END * c.crossed_share AS volume_usd
    FROM (SELECT c.*, d.other_ts - to_seconds(param('time_bucket_s')::BIGINT) AS heatmap_ts,
                 (c.bucket_index - d.price_bucket_index + d.other_price_bucket_index) * param('price_bucket_usd')
                     AS other_bucket
          FROM crossed c JOIN other_day d USING (symbol, horizon, origin_ts)) c
    JOIN heatmap h ON h.model = 'ensemble' AND h.symbol = c.symbol AND h.ts = c.heatmap_ts
        AND h.price_bucket = c.other_bucket
)
SELECT model, symbol, horizon, origin_ts, side, bucket_index, sum(volume_usd) AS volume_usd
FROM (SELECT * FROM model_levels UNION ALL SELECT * FROM unmodelled WHERE volume_usd > 0) GROUP BY ALL
UNION ALL SELECT * FROM uniform WHERE volume_usd > 0
UNION ALL SELECT * FROM nearest WHERE volume_usd > 0
UNION ALL SELECT * FROM shuffled WHERE volume_usd > 0;

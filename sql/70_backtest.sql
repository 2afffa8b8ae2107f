-- Layer 5a: the backtest's forecasts. A heatmap claims two things, and both are tested as forecasts:
--   volume:   if price follows a path, about the alive levels it crosses are liquidated;
--   location: liquidations happen where the levels are, more than distance from the price explains.
-- At each forecast origin t (every multiple of the horizon h, UTC) the levels are frozen as they were
-- at t; the realized trigger path in (t, t + h] then says which of them were crossed. Models and
-- position-free baselines are turned into the same thing, "crossed levels" (volume per price bucket
-- that the path crossed), and scored by the same SQL (sql/71_backtest_scores.sql).

-- Realized liquidations, one row per event (or per period and side for aggregated exports).
CREATE OR REPLACE TABLE realized_liquidations AS
SELECT symbol, ts, side, price, volume_usd, source FROM stg_realized_liquidations ORDER BY symbol, ts;

-- The horizons, from build.py --horizons (default 1h,4h,24h). Levels at t come from the heatmap's
-- time grid, so a horizon must be a whole number of its time buckets.
CREATE OR REPLACE TABLE backtest_horizons AS
SELECT trim(h) AS horizon, interval_seconds(trim(h)) AS horizon_s
FROM unnest(string_split(coalesce(getvariable('backtest_horizons'), '1h,4h,24h'), ',')) t(h);
SELECT CASE WHEN (SELECT count(*) FROM backtest_horizons WHERE horizon_s IS NULL OR horizon_s <= 0
                  OR horizon_s % param('time_bucket_s')::BIGINT <> 0) > 0
    THEN error('--horizons: each horizon must be a Binance interval (1h, 4h, 1d ...) that is a whole number of '
               || 'time buckets (time_bucket_s = ' || param('time_bucket_s')::BIGINT || ' s); got '
               || getvariable('backtest_horizons')) END;

-- Trigger bars per whole time bucket: the price path at the grid's resolution.
CREATE OR REPLACE TABLE trigger_buckets AS
SELECT symbol, time_bucket(to_seconds(param('time_bucket_s')::BIGINT), ts) AS ts,
       min(low) AS low, max(high) AS high, arg_max(close, ts) AS close, max(end_ts) AS end_ts
FROM trigger_bars GROUP BY ALL;

-- Every forecast window (t, t + h] that trigger bars and realized liquidations both cover, with the
-- price at t (the last trigger close), what the path did in the window (its lowest low, highest high),
-- the range of the 24 hours before t (for breakout) and open interest at t. The first
-- backtest_warmup_s of the realized data are not scored: the models start with no positions, and
-- what is fitted walk-forward needs some history. They are still history for the later windows.
CREATE OR REPLACE TABLE backtest_windows AS
WITH coverage AS (
    SELECT symbol, time_bucket(INTERVAL 1 DAY, min(ts)) AS first_day,
           time_bucket(INTERVAL 1 DAY, max(ts)) + INTERVAL 1 DAY AS end_day
    FROM realized_liquidations GROUP BY symbol
),
origins AS (
    SELECT h.horizon, h.horizon_s, b.symbol, time_bucket(to_seconds(h.horizon_s), b.ts) AS origin_ts,
           min(b.low) AS path_low, max(b.high) AS path_high, max(b.end_ts) AS last_end_ts
    FROM trigger_buckets b CROSS JOIN backtest_horizons h GROUP BY ALL
),
prior AS (          -- the range of the 24 hours before each time bucket, and its last close
    SELECT symbol, ts + to_seconds(param('time_bucket_s')::BIGINT) AS origin_ts, close AS price,
           min(low) OVER w AS prior_low, max(high) OVER w AS prior_high
    FROM trigger_buckets
    WINDOW w AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL 24 HOURS - to_seconds(param('time_bucket_s')::BIGINT)
                 PRECEDING AND CURRENT ROW)
)
SELECT o.symbol, o.horizon, o.horizon_s, o.origin_ts, o.origin_ts + to_seconds(o.horizon_s) AS end_ts,
       o.origin_ts >= c.first_day + to_seconds(param('backtest_warmup_s')::BIGINT) AS scored,
       p.price, floor(p.price / param('price_bucket_usd'))::BIGINT AS price_bucket_index,
       least(o.path_low, p.price) AS path_low, greatest(o.path_high, p.price) AS path_high,
       p.prior_low, p.prior_high, oi.open_interest_usd
FROM origins o
JOIN coverage c ON c.symbol = o.symbol AND o.origin_ts >= c.first_day AND o.origin_ts + to_seconds(o.horizon_s) <= c.end_day
JOIN prior p ON p.symbol = o.symbol AND p.origin_ts = o.origin_ts
ASOF JOIN stg_open_interest oi ON oi.symbol = o.symbol AND o.origin_ts >= oi.ts
WHERE o.last_end_ts = o.origin_ts + to_seconds(o.horizon_s);   -- whole windows only

-- The price buckets each window's path crossed on each side (longs: from the price at t down to the
-- lowest low; shorts: up to the highest high), with the crossed share of each bucket and its distance
-- from the price's bucket at t, in buckets.
CREATE OR REPLACE TABLE backtest_crossed_buckets AS
WITH ranges AS (
    SELECT w.*, s.side, CASE s.side WHEN 'long' THEN w.path_low ELSE w.price END AS range_low,
           CASE s.side WHEN 'long' THEN w.price ELSE w.path_high END AS range_high,
           param('price_bucket_usd') AS usd
    FROM backtest_windows w CROSS JOIN (VALUES ('long'), ('short')) s(side)
),
buckets AS (
    SELECT *, unnest(generate_series(floor(range_low / usd)::BIGINT, floor(range_high / usd)::BIGINT)) AS bucket_index
    FROM ranges WHERE range_high > range_low
)
SELECT symbol, horizon, origin_ts, side, bucket_index,
       abs(bucket_index - price_bucket_index) AS distance_buckets,
       greatest(range_low, bucket_index * usd) AS crossed_low,       -- the crossed part of the bucket
       least(range_high, (bucket_index + 1) * usd) AS crossed_high,
       (least(range_high, (bucket_index + 1) * usd) - greatest(range_low, bucket_index * usd)) / usd AS crossed_share
FROM buckets WHERE least(range_high, (bucket_index + 1) * usd) > greatest(range_low, bucket_index * usd);

-- Realized volume per window and side, and per price bucket where the events carry prices.
CREATE OR REPLACE TABLE backtest_realized AS
SELECT w.symbol, w.horizon, w.origin_ts, r.side, floor(r.price / param('price_bucket_usd'))::BIGINT AS bucket_index,
       sum(r.volume_usd) AS volume_usd
FROM realized_liquidations r JOIN backtest_windows w
    ON r.symbol = w.symbol AND r.ts >= w.origin_ts AND r.ts < w.end_ts
GROUP BY ALL;

-- Distances in buckets, pooled in bins that double in width (0, 1, 2-3, 4-7, 8-15 ...): a few weeks
-- of liquidations are too few to learn every single distance, and near the price a bucket matters more.
CREATE OR REPLACE MACRO distance_bin(d) AS floor(log2(d + 1))::INTEGER;

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
    ('shuffled', 'the ensemble''s levels from another day (half the span away, wrapping round), moved to the '
                 || 'price at t: the same shape of levels at the wrong time')
) t(model, description);

-- Every predictor's crossed levels: volume per window, side and price bucket, frozen at t.
--   models:    positions alive at t (opened at or before t, not yet consumed) whose exact liquidation
--              price the path crossed in (t, t + h], valued at the scale of t;
--   baselines: their volume per bucket times the crossed share of the bucket.
CREATE OR REPLACE TABLE forecast_levels AS
WITH consumed AS (    -- each consumed position in the window of each horizon that holds its consumption
    SELECT p.*, h.horizon, time_bucket(to_seconds(h.horizon_s), p.consumed_ts - INTERVAL 1 MICROSECOND) AS origin_ts
    FROM positions p CROSS JOIN backtest_horizons h WHERE p.consumed_ts IS NOT NULL
),
model_levels AS (
    SELECT c.model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           sum(c.scale_free_volume * exp(g.log_scale)) AS volume_usd
    FROM consumed c
    JOIN backtest_windows w USING (symbol, horizon, origin_ts)
    JOIN grid_scale g ON g.model = c.model AND g.symbol = c.symbol AND g.side = c.side AND g.end_ts = c.origin_ts
    WHERE c.created_ts <= c.origin_ts
    GROUP BY ALL
),
crossed AS (SELECT c.*, w.price, w.prior_low, w.prior_high, w.open_interest_usd
            FROM backtest_crossed_buckets c JOIN backtest_windows w USING (symbol, horizon, origin_ts)),
uniform AS (        -- naive_move, price_move and breakout: even levels over the prices where each applies
    SELECT m.model, c.symbol, c.horizon, c.origin_ts, c.side, c.bucket_index,
           CASE WHEN m.model = 'price_move' THEN param('price_bucket_usd') ELSE c.open_interest_usd END / c.price * CASE
               WHEN m.model IN ('naive_move', 'price_move') THEN c.crossed_high - c.crossed_low
               -- breakout: only the crossed prices beyond the prior 24 hours' range
               WHEN c.side = 'long' THEN greatest(0, least(c.crossed_high, c.prior_low) - c.crossed_low)
               ELSE greatest(0, c.crossed_high - greatest(c.crossed_low, c.prior_high))
           END AS volume_usd
    FROM crossed c CROSS JOIN (VALUES ('naive_move'), ('price_move'), ('breakout')) m(model)
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
    SELECT *, sum(volume_usd) OVER bin AS bin_usd, sum(exposure_usd) OVER bin AS bin_exposure_usd,
           sum(volume_usd) OVER all_bins AS all_usd, sum(exposure_usd) OVER all_bins AS all_exposure_usd
    FROM (SELECT symbol, horizon, origin_ts, side, distance_bin(distance_buckets) AS distance_bin, bucket_index,
                 crossed_share, open_interest_usd, open_interest_usd * crossed_share AS exposure_usd,
                 0 AS volume_usd, 0 AS is_event
          FROM crossed
          UNION ALL
          SELECT symbol, horizon, origin_ts, side, distance_bin, NULL, NULL, NULL, 0, volume_usd, 1 FROM history)
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
    FROM profile WHERE is_event = 0
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
SELECT * FROM model_levels
UNION ALL SELECT * FROM uniform WHERE volume_usd > 0
UNION ALL SELECT * FROM nearest WHERE volume_usd > 0
UNION ALL SELECT * FROM shuffled WHERE volume_usd > 0;

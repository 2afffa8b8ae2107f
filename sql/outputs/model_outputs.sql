-- Outputs layer: the models' outputs, per model and symbol: the heatmap (alive volume per time and price
-- bucket), the alive levels and liquidation map at the last time, the predicted liquidations per
-- time bucket, and a comparison of the models. Exported to SQLite by sql/outputs/published.sql's rules.

-- Each position's place on the time grid: the first grid time at or after it opened and the first
-- at or after it was consumed (it is alive at grid times in between: opened <= t < consumed). The grid
-- is every whole time bucket the trigger bars cover (time_grid), so that is the next bucket end within
-- the grid's span (by arithmetic: an ASOF join would sort every position against the grid).
CREATE OR REPLACE MACRO grid_end_at_or_after(ts) AS
    time_bucket(to_seconds(param('time_bucket_s')::BIGINT), ts)
    + CASE WHEN ts = time_bucket(to_seconds(param('time_bucket_s')::BIGINT), ts) THEN INTERVAL 0 SECOND
           ELSE to_seconds(param('time_bucket_s')::BIGINT) END;
CREATE OR REPLACE VIEW position_grid AS
WITH span AS (SELECT symbol, min(end_ts) AS first_end_ts, max(end_ts) AS last_end_ts FROM time_grid GROUP BY symbol)
SELECT p.*, greatest(grid_end_at_or_after(p.created_ts), s.first_end_ts) AS first_alive_end_ts,
       CASE WHEN grid_end_at_or_after(p.consumed_ts) <= s.last_end_ts
            THEN greatest(grid_end_at_or_after(p.consumed_ts), s.first_end_ts) END AS consumed_end_ts
FROM positions p JOIN span s USING (symbol)
WHERE grid_end_at_or_after(p.created_ts) <= s.last_end_ts;

-- The scale of alive levels (sql/lifecycle/positions.sql) at every time of the grid, per model and side.
CREATE OR REPLACE TABLE grid_scale AS
SELECT m.model, g.symbol, m.side, g.end_ts, coalesce(s.log_scale, 0) AS log_scale
FROM time_grid g JOIN (SELECT DISTINCT model, symbol, side FROM level_scale) m USING (symbol)
ASOF LEFT JOIN level_scale s ON s.model = m.model AND s.symbol = g.symbol AND s.side = m.side AND g.end_ts >= s.ts;

-- Alive volume at the end of every time bucket: +volume where a position starts being alive,
-- -volume where it is consumed, summed along time per level (the running sum after each change holds
-- until the next change), times the open-interest scale. The running sums are taken over the sparse
-- changes and only then spread over the grid: a running sum over the dense grid sorts every cell.
-- A build computes the buckets that end at or after rebuild_from() (sql/sources/macros.sql: the volume alive
-- at a bucket's end reads the data up to that end, inclusive), and the heatmap (persisted) keeps the
-- earlier ones summed over leverage: alive_cells is the build's own TEMP table, never written to the
-- file (as a persisted table, its new rows would be written and checkpointed at every commit, and no
-- later build reads them). What was alive before comes in as one change per level at the last kept
-- grid time: the sum of the positions alive then, which is what the running sum of every earlier
-- change adds up to. Only the positions opened or consumed after that time are placed on the grid,
-- and the window runs over their changes alone (over every position's changes, a day added would
-- sort all the history again: its cost would grow with the data, not with the day).
CREATE OR REPLACE MACRO first_bucket_rebuilt() AS rebuild_from() - to_seconds(param('time_bucket_s')::BIGINT);
CREATE OR REPLACE TEMP TABLE alive_cells AS
WITH kept AS (      -- each symbol's last kept grid time, the end of the bucket before rebuild_from(); NULL where its
                    -- grid does not hold that time (a full build; a grid that starts later, or ends before it)
    SELECT symbol, max(end_ts) FILTER (end_ts = first_bucket_rebuilt()) AS kept_ts FROM time_grid GROUP BY symbol
),
carried AS (        -- per level, the volume alive at the kept time, as one change then. Alive at a grid time t
                    -- (position_grid): opened <= t < consumed, which on the grid is created_ts <= t < consumed_ts.
                    -- The filters name the kept time first_bucket_rebuilt(), a constant, so that DuckDB applies
                    -- them as it reads positions (here and in changed).
    SELECT p.model, p.symbol, p.side, p.leverage, p.bucket_index, k.kept_ts AS end_ts, sum(p.scale_free_volume) AS change
    FROM positions p JOIN kept k ON k.symbol = p.symbol
    WHERE k.kept_ts IS NOT NULL
      AND p.created_ts <= first_bucket_rebuilt() AND (p.consumed_ts IS NULL OR p.consumed_ts > first_bucket_rebuilt())
    GROUP BY ALL
),
changed AS (        -- the positions with a change after the kept time: opened or consumed after it ...
    SELECT p.* FROM position_grid p JOIN kept k USING (symbol)
    WHERE k.kept_ts IS NOT NULL AND (p.created_ts > first_bucket_rebuilt() OR p.consumed_ts > first_bucket_rebuilt())
    UNION ALL       -- ... and every position of a symbol that keeps no time
    SELECT p.* FROM position_grid p JOIN kept k USING (symbol) WHERE k.kept_ts IS NULL
),
events AS (         -- each position's two changes, from rebuild_from() on (a NULL end: not consumed within the grid).
                    -- Unnested from one read of changed: read twice, DuckDB materializes it, and then places a third
                    -- of all positions on the grid for the second branch before it sees that no symbol needs them.
    SELECT * FROM (
        SELECT model, symbol, side, leverage, bucket_index, unnest([first_alive_end_ts, consumed_end_ts]) AS end_ts,
               unnest([scale_free_volume, -scale_free_volume]) AS change
        FROM changed
    )
    WHERE end_ts >= rebuild_from()
),
changes AS (
    SELECT model, symbol, side, leverage, bucket_index, end_ts, sum(change) AS change FROM events GROUP BY ALL
    UNION ALL
    FROM carried
),
running AS (
    SELECT c.*, sum(change) OVER level AS alive_scale_free,
           -- held until the next change; after the last, to the grid's end, unless the level's changes
           -- add up to nothing (then it is empty from there on). A level's changes are all of them in a
           -- full build; where volume is carried in, that volume and the changes after it: summed afresh
           -- from the positions alive, it holds none of the earlier changes' rounding, so its own size is
           -- the scale to tell rounding from volume by, as the largest change is.
           coalesce(lead(end_ts) OVER level - to_seconds(param('time_bucket_s')::BIGINT),
                    CASE WHEN abs(sum(change) OVER whole) <= 1e-9 * max(abs(change)) OVER whole THEN end_ts
                         ELSE g.last_end_ts END) AS until_ts
    FROM changes c JOIN (SELECT symbol, max(end_ts) AS last_end_ts FROM time_grid GROUP BY symbol) g USING (symbol)
    WINDOW level AS (PARTITION BY model, symbol, side, leverage, bucket_index ORDER BY end_ts),
           whole AS (PARTITION BY model, symbol, side, leverage, bucket_index)
),
dense AS (
    SELECT model, symbol, side, leverage, bucket_index, alive_scale_free,
           unnest(generate_series(greatest(end_ts, rebuild_from()), until_ts,
                                  to_seconds(param('time_bucket_s')::BIGINT))) AS end_ts
    FROM running WHERE until_ts >= rebuild_from()
)
SELECT d.model, d.symbol, d.end_ts - to_seconds(param('time_bucket_s')::BIGINT) AS start_ts, d.end_ts, d.side,
       d.leverage, d.bucket_index, d.alive_scale_free * exp(g.log_scale) AS alive_volume_usd
FROM dense d JOIN grid_scale g USING (model, symbol, side, end_ts)
WHERE d.alive_scale_free * exp(g.log_scale) >= 0.01;    -- drop what is left of rounding after consumption

-- The heatmap: alive volume per time and price bucket, both sides side by side. Persisted like
-- alive_cells, in time order so that a build's new rows follow the kept ones.
CREATE TABLE IF NOT EXISTS heatmap (
    model VARCHAR, symbol VARCHAR, ts TIMESTAMP, price_bucket DOUBLE, long_usd DOUBLE, short_usd DOUBLE);
DELETE FROM heatmap WHERE ts >= first_bucket_rebuilt();
INSERT INTO heatmap
SELECT model, symbol, start_ts AS ts, bucket_index * param('price_bucket_usd') AS price_bucket,
       coalesce(sum(alive_volume_usd) FILTER (side = 'long'), 0) AS long_usd,
       coalesce(sum(alive_volume_usd) FILTER (side = 'short'), 0) AS short_usd
FROM alive_cells WHERE start_ts >= first_bucket_rebuilt()
GROUP BY ALL ORDER BY ts, model, symbol, price_bucket;

-- The last time of each symbol's grid, and the price then.
CREATE OR REPLACE VIEW last_time AS
SELECT g.symbol, max(g.end_ts) AS end_ts, max(g.end_ts) - to_seconds(param('time_bucket_s')::BIGINT) AS start_ts,
       (SELECT arg_max(k.close, k.ts) FROM stg_price_klines k WHERE k.symbol = g.symbol AND k.ts < max(g.end_ts))
           AS current_price
FROM time_grid g GROUP BY g.symbol;


-- At the last time the grid needs no arithmetic: the last end is a grid time, so position_grid's first grid
-- time at or after t is at or before it exactly when t is. Opened by then is created_ts <= end_ts, consumed
-- by then is consumed_ts <= end_ts, and alive then is the rest: the two statements below read positions
-- with these conditions instead of position_grid, and skip its joins with the grid.

-- Alive levels at the last time, by model, side, leverage and price bucket.
CREATE OR REPLACE TABLE levels AS
SELECT p.model, p.symbol, l.start_ts AS ts, p.side, p.leverage, p.price_bucket,
       sum(p.scale_free_volume * exp(g.log_scale)) AS alive_volume_usd,
       count(*) AS positions,
       round(100 * (p.price_bucket + param('price_bucket_usd') / 2 - l.current_price) / l.current_price, 2)
           AS distance_pct
FROM positions p JOIN last_time l USING (symbol)
JOIN grid_scale g ON g.model = p.model AND g.symbol = p.symbol AND g.side = p.side AND g.end_ts = l.end_ts
WHERE p.created_ts <= l.end_ts AND (p.consumed_ts IS NULL OR p.consumed_ts > l.end_ts)
GROUP BY ALL ORDER BY model, symbol, side, leverage, price_bucket;

-- The model's forecast of what was liquidated: volume consumed in each time bucket. Persisted like the
-- heatmap: the buckets that end from rebuild_from() on are computed again. A consumption's bucket ends
-- at or after rebuild_from() only if it came less than a bucket before, or if its grid starts at or after
-- rebuild_from() (position_grid clamps to the grid's first end). The first filter says so with constants
-- (the latest first grid end over all symbols), so that DuckDB applies it as it reads positions, before
-- position_grid's joins (which would otherwise place every position on the grid first).
SET VARIABLE grid_latest_first_end = (SELECT max(first_end) FROM (
    SELECT min(end_ts) AS first_end FROM time_grid GROUP BY symbol));
CREATE TABLE IF NOT EXISTS predicted_liquidations (
    model VARCHAR, symbol VARCHAR, ts TIMESTAMP, side VARCHAR, volume_usd DOUBLE, positions BIGINT);
DELETE FROM predicted_liquidations WHERE ts >= first_bucket_rebuilt();
INSERT INTO predicted_liquidations BY NAME
SELECT model, symbol, consumed_end_ts - to_seconds(param('time_bucket_s')::BIGINT) AS ts, side,
       sum(consumed_volume_usd) AS volume_usd, count(*) AS positions
FROM position_grid
WHERE (consumed_ts > first_bucket_rebuilt() OR getvariable('grid_latest_first_end') >= rebuild_from())
  AND consumed_end_ts >= rebuild_from()
GROUP BY ALL ORDER BY ts, model, symbol, side;

-- The liquidation map at the last time: volume per price bucket (longs below the price, shorts
-- above) and the cumulative volume from the current price outward.
CREATE OR REPLACE TABLE liquidation_map AS
WITH buckets AS (
    SELECT model, symbol, ts, side, price_bucket, sum(alive_volume_usd) AS volume_usd
    FROM levels GROUP BY ALL
)
SELECT b.model, b.symbol, b.ts, l.current_price, b.side, b.price_bucket, b.volume_usd,
       sum(b.volume_usd) OVER (PARTITION BY b.model, b.symbol, b.side
                               ORDER BY CASE b.side WHEN 'long' THEN -b.price_bucket ELSE b.price_bucket END)
           AS cumulative_usd,
       round(100 * (b.price_bucket + param('price_bucket_usd') / 2 - l.current_price) / l.current_price, 2)
           AS distance_pct
FROM buckets b JOIN last_time l USING (symbol)
ORDER BY b.model, b.symbol, b.side, b.price_bucket;

-- The models side by side: where volume went over the whole window (created = alive + consumed +
-- closed by falling open interest) and the largest alive level at the last time.
CREATE OR REPLACE TABLE model_comparison AS
WITH fate AS (
    SELECT p.model, p.symbol, p.side, p.volume_usd,
           CASE WHEN p.consumed_ts <= l.end_ts THEN p.consumed_volume_usd ELSE 0 END AS consumed_usd,
           CASE WHEN p.consumed_ts IS NULL OR p.consumed_ts > l.end_ts
                THEN p.scale_free_volume * exp(g.log_scale) ELSE 0 END AS alive_usd
    FROM positions p JOIN last_time l USING (symbol)
    JOIN grid_scale g ON g.model = p.model AND g.symbol = p.symbol AND g.side = p.side AND g.end_ts = l.end_ts
    WHERE p.created_ts <= l.end_ts
),
totals AS (
    SELECT model, symbol, side, sum(volume_usd) AS created_volume_usd, sum(consumed_usd) AS consumed_volume_usd,
           sum(alive_usd) AS alive_volume_usd, sum(volume_usd - consumed_usd - alive_usd) AS closed_volume_usd
    FROM fate GROUP BY ALL
),
largest AS (
    SELECT model, symbol, side, arg_max(price_bucket, volume_usd) AS largest_level_price,
           max(volume_usd) AS largest_level_usd, count(*) AS alive_buckets,
           arg_min(price_bucket, abs(distance_pct)) AS nearest_level_price
    FROM liquidation_map GROUP BY ALL
)
SELECT t.*, g.largest_level_price, g.largest_level_usd, g.nearest_level_price, g.alive_buckets
FROM totals t LEFT JOIN largest g USING (model, symbol, side)
ORDER BY symbol, model, side;

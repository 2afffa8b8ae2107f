-- Outputs layer: what the pages and stored queries read, computed once here so that every request is an
-- indexed read of a few rows (datasette.yaml's queries): the liquidation map by leverage at every time,
-- and the models compared at every time (the heatmap's rows and grid_prices: sql/outputs/heatmap_rows.sql).
-- Persisted and appended like the heatmap (sql/outputs/model_outputs.sql): a build computes the rows of the
-- time buckets it rebuilt, and keeps the earlier ones.

-- The liquidation map at every time, by leverage: per model, symbol, time, side and leverage tier, the
-- alive volume of each price bucket as a JSON object {"price bucket": USDT}, which the queries expand
-- (SQLite's json_each). One row per tier keeps the table small: 56 rows a time bucket for four models
-- and seven tiers, where a row per price bucket would be about 5,600. as_of, the bucket's end, is the instant
-- the map is taken at: a page or query asking for the map at `at` reads the last as_of <= at, and nothing
-- else needs to know the bucket's length.
CREATE TABLE IF NOT EXISTS map_levels (
    model VARCHAR, symbol VARCHAR, ts TIMESTAMP, as_of TIMESTAMP, side VARCHAR, leverage INTEGER, current_price DOUBLE,
    alive_volume_usd DOUBLE, volume_by_price_usd VARCHAR);
DELETE FROM map_levels WHERE ts >= first_bucket_rebuilt();
INSERT INTO map_levels
SELECT a.model, a.symbol, a.start_ts AS ts, a.start_ts + to_seconds(param('time_bucket_s')::BIGINT) AS as_of, a.side, a.leverage, p.price_close AS current_price,
       sum(a.alive_volume_usd) AS alive_volume_usd,
       '{' || string_agg('"' || (a.bucket_index * param('price_bucket_usd'))::VARCHAR || '":'
                         || round(a.alive_volume_usd, 2)::VARCHAR, ',' ORDER BY a.bucket_index) || '}' AS volume_by_price_usd
FROM alive_cells a LEFT JOIN grid_prices p ON p.symbol = a.symbol AND p.ts = a.start_ts
WHERE a.start_ts >= first_bucket_rebuilt()
GROUP BY ALL
ORDER BY a.model, a.symbol, ts, a.side, a.leverage;

-- The models side by side at every time: alive volume per side, the largest cluster of each side and
-- the volume near the price (the compare_models query reads one time of it, as_of as in map_levels).
CREATE TABLE IF NOT EXISTS models_compared (
    model VARCHAR, symbol VARCHAR, ts TIMESTAMP, as_of TIMESTAMP, current_price DOUBLE, long_alive_usd DOUBLE, short_alive_usd DOUBLE,
    largest_long_price DOUBLE, largest_long_usd DOUBLE, largest_short_price DOUBLE, largest_short_usd DOUBLE,
    within_2pct_usd DOUBLE, within_5pct_usd DOUBLE);
DELETE FROM models_compared WHERE ts >= first_bucket_rebuilt();
INSERT INTO models_compared
SELECT h.model, h.symbol, h.ts, h.ts + to_seconds(param('time_bucket_s')::BIGINT) AS as_of, p.price_close AS current_price, sum(h.long_usd), sum(h.short_usd),
       arg_max(h.price_bucket, h.long_usd), max(h.long_usd), arg_max(h.price_bucket, h.short_usd), max(h.short_usd),
       -- the bucket's middle within 2 % (5 %) of the price
       coalesce(sum(h.long_usd + h.short_usd) FILTER (abs(h.price_bucket + param('price_bucket_usd') / 2 - p.price_close)
                                             <= 0.02 * p.price_close), 0),
       coalesce(sum(h.long_usd + h.short_usd) FILTER (abs(h.price_bucket + param('price_bucket_usd') / 2 - p.price_close)
                                             <= 0.05 * p.price_close), 0)
FROM heatmap h LEFT JOIN grid_prices p ON p.symbol = h.symbol AND p.ts = h.ts
WHERE h.ts >= first_bucket_rebuilt()
GROUP BY h.model, h.symbol, h.ts, as_of, p.price_close
ORDER BY h.model, h.symbol, h.ts;

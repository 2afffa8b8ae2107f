-- Layer 4b: what the heatmap page and the heatmap stored query read, computed once here so that every
-- request is an indexed read of a few rows (datasette.yaml's heatmap query): the heatmap as one row per
-- time at a few resolutions. Persisted and appended like the heatmap (sql/60_model_outputs.sql): a build
-- computes the rows of the time buckets it rebuilt, and keeps the earlier ones. grid_prices is read by
-- sql/65_page_outputs.sql too.

-- The trade price at every time of the grid: the bucket's bars (open, high, low, close) and the last
-- close before its end, the "current price" of the map and the comparison.
CREATE OR REPLACE TEMP TABLE grid_prices AS
WITH bars AS (
    SELECT g.symbol, g.start_ts AS ts, arg_min(k.open, k.ts) AS price_open, max(k.high) AS price_high,
           min(k.low) AS price_low
    FROM time_grid g JOIN stg_price_klines k ON k.symbol = g.symbol AND k.ts >= g.start_ts AND k.ts < g.end_ts
    WHERE g.start_ts >= time_bucket(to_seconds(24 * param('time_bucket_s')::BIGINT), first_bucket_rebuilt())
      AND k.ts >= time_bucket(to_seconds(24 * param('time_bucket_s')::BIGINT), first_bucket_rebuilt())
    GROUP BY ALL
)
SELECT g.symbol, g.start_ts AS ts, b.price_open, b.price_high, b.price_low, k.close AS price_close
FROM time_grid g
ASOF LEFT JOIN stg_price_klines k ON k.symbol = g.symbol AND g.end_ts > k.ts
LEFT JOIN bars b ON b.symbol = g.symbol AND b.ts = g.start_ts
WHERE g.start_ts >= time_bucket(to_seconds(24 * param('time_bucket_s')::BIGINT), first_bucket_rebuilt());

-- The heatmap as the chart draws it: per model, symbol, resolution and time, one row with the volume of
-- every price bucket of a window as a JSON array (thousands of USDT, long and short together), the
-- totals and the price. Resolutions: the base price bucket and 2, 5 and 10 of them, at the base time
-- bucket and at 4 and 24 of them; a coarser time bucket holds the mean of its base buckets (the volume
-- alive on average while it lasted) and its trade prices' open, high, low and close. The window is the
-- bucket's traded range widened by heatmap_margin_pct, as traders' heatmaps show a band around the
-- price (the default 25 % holds the levels of 5x and more); the totals count every level, in or out.
-- The heatmap query (datasette.yaml) picks the finest resolution whose cells fit one response. A build
-- recomputes each resolution's rows from the start of its time bucket holding the first bucket rebuilt
-- (rows_from): a day added recomputes one day of 24-bucket rows but only the new hours of the finer ones.
-- (page_rows_from(), the earliest of them, is where the export to SQLite rewrites from.)
CREATE OR REPLACE TABLE heatmap_resolutions AS
SELECT t * param('time_bucket_s')::BIGINT AS time_bucket_s, p * param('price_bucket_usd') AS price_bucket_usd
FROM unnest([1, 4, 24]) AS times(t) CROSS JOIN unnest([1, 2, 5, 10]) AS prices(p)
ORDER BY time_bucket_s, price_bucket_usd;
CREATE OR REPLACE MACRO page_rows_from() AS
    time_bucket(to_seconds(24 * param('time_bucket_s')::BIGINT), first_bucket_rebuilt());
CREATE TABLE IF NOT EXISTS heatmap_rows (
    model VARCHAR, symbol VARCHAR, time_bucket_s BIGINT, price_bucket_usd DOUBLE, ts TIMESTAMP, cells BIGINT,
    price_bucket_first DOUBLE, alive_kusd VARCHAR, long_usd_total DOUBLE, short_usd_total DOUBLE,
    price_open DOUBLE, price_high DOUBLE, price_low DOUBLE, price_close DOUBLE);
DELETE FROM heatmap_rows WHERE ts >= time_bucket(to_seconds(time_bucket_s), first_bucket_rebuilt());
-- (one time bucket at a time: the four price resolutions of all of them at once held 12 copies of the
-- heatmap in one aggregate)
CREATE OR REPLACE TEMP MACRO heatmap_rows_at(time_bucket_s_) AS TABLE
WITH times AS (   -- the time bucket, and its first time rebuilt
    SELECT time_bucket_s_ AS time_bucket_s, time_bucket(to_seconds(time_bucket_s_), first_bucket_rebuilt()) AS rows_from
),
resolutions AS (SELECT r.*, t.rows_from FROM heatmap_resolutions r JOIN times t USING (time_bucket_s)),
base_buckets AS (   -- how many base time buckets each coarser one holds, for the mean
    SELECT g.symbol, r.time_bucket_s, time_bucket(to_seconds(r.time_bucket_s), g.start_ts) AS ts, count(*) AS n
    FROM time_grid g JOIN times r ON g.start_ts >= r.rows_from
    WHERE g.start_ts >= page_rows_from() GROUP BY ALL
),
prices AS (
    SELECT p.symbol, r.time_bucket_s, time_bucket(to_seconds(r.time_bucket_s), p.ts) AS ts,
           arg_min(p.price_open, p.ts) AS price_open, max(p.price_high) AS price_high,
           min(p.price_low) AS price_low, arg_max(p.price_close, p.ts) AS price_close
    FROM grid_prices p JOIN times r ON p.ts >= r.rows_from
    WHERE p.ts >= page_rows_from() GROUP BY ALL
),
cells AS (
    SELECT h.model, h.symbol, r.time_bucket_s, r.price_bucket_usd, time_bucket(to_seconds(r.time_bucket_s), h.ts) AS ts,
           floor(h.price_bucket / r.price_bucket_usd)::BIGINT AS b, sum(h.long_usd) AS long_usd, sum(h.short_usd) AS short_usd
    FROM heatmap h JOIN resolutions r ON h.ts >= r.rows_from
    WHERE h.ts >= page_rows_from()
    GROUP BY ALL
),
rows_ AS (          -- each row's totals and price
    SELECT c.model, c.symbol, c.time_bucket_s, c.price_bucket_usd, c.ts, n.n, min(c.b) AS min_b, max(c.b) AS max_b,
           sum(c.long_usd) / n.n AS long_usd_total, sum(c.short_usd) / n.n AS short_usd_total,
           p.price_open, p.price_high, p.price_low, p.price_close
    FROM cells c
    JOIN base_buckets n USING (symbol, time_bucket_s, ts)
    LEFT JOIN prices p USING (symbol, time_bucket_s, ts)
    GROUP BY c.model, c.symbol, c.time_bucket_s, c.price_bucket_usd, c.ts, n.n,
             p.price_open, p.price_high, p.price_low, p.price_close
),
windows AS (        -- its window of price buckets (with no trade in the bucket: every bucket alive)
    SELECT *, coalesce(floor(price_low * (1 - param('heatmap_margin_pct') / 100) / price_bucket_usd)::BIGINT, min_b) AS lo,
              coalesce(floor(price_high * (1 + param('heatmap_margin_pct') / 100) / price_bucket_usd)::BIGINT, max_b) AS hi
    FROM rows_
),
dense AS (          -- every bucket of the window, 0 where nothing is alive
    SELECT w.*, unnest(generate_series(w.lo, w.hi)) AS b FROM windows w
)
SELECT d.model, d.symbol, d.time_bucket_s, d.price_bucket_usd, d.ts, d.hi - d.lo + 1 AS cells,
       d.lo * d.price_bucket_usd AS price_bucket_first,
       '[' || string_agg(round(coalesce(c.long_usd + c.short_usd, 0) / d.n / 1000)::BIGINT::VARCHAR, ',' ORDER BY d.b) || ']'
           AS alive_kusd,
       d.long_usd_total, d.short_usd_total, d.price_open, d.price_high, d.price_low, d.price_close
FROM dense d
LEFT JOIN cells c ON c.model = d.model AND c.symbol = d.symbol AND c.time_bucket_s = d.time_bucket_s
                 AND c.price_bucket_usd = d.price_bucket_usd AND c.ts = d.ts AND c.b = d.b
GROUP BY ALL
ORDER BY d.model, d.symbol, d.price_bucket_usd, d.ts;
INSERT INTO heatmap_rows FROM heatmap_rows_at(param('time_bucket_s')::BIGINT);
INSERT INTO heatmap_rows FROM heatmap_rows_at(4 * param('time_bucket_s')::BIGINT);
INSERT INTO heatmap_rows FROM heatmap_rows_at(24 * param('time_bucket_s')::BIGINT);

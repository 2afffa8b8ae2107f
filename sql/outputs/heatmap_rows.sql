-- Outputs layer: what the heatmap page and the heatmap stored query read, computed once here so that every
-- request is an indexed read of a few rows (datasette.yaml's heatmap query): the heatmap as one row per
-- time at a few resolutions, over every leverage tier and for each. Persisted and appended like the heatmap
-- (sql/outputs/model_outputs.sql): a build computes the rows of the time buckets it rebuilt, and keeps the earlier
-- ones. grid_prices is read by sql/outputs/page_outputs.sql too.

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
-- totals and the price; over every leverage tier (heatmap_rows) and, at the base time bucket, for each tier
-- (heatmap_rows_by_leverage, the heatmap query's leverage filter). Resolutions: the base price bucket and 2, 5
-- and 10 of them, at the base time bucket and at 4 and 24 of them; a coarser time bucket holds the mean of its
-- base buckets (the volume alive on average while it lasted) and its trade prices' open, high, low and close.
-- The window is the bucket's traded range widened by heatmap_margin_pct, as traders' heatmaps show a band around
-- the price (the default 25 % holds the levels of 5x and more); the totals count every level, in or out. A
-- tier's row has its time's window, so that the tiers' rows add up to the row of every tier cell by cell.
-- The heatmap query (datasette.yaml) picks the finest resolution whose cells fit one response, from
-- cumulative_cells: the cells of a row and of every earlier row at its resolution, so that the cells of a
-- range are a difference of two rows' (summing them row by row cost a request more than reading its answer).
-- A build recomputes each resolution's rows from the start of its time bucket holding the first bucket
-- rebuilt (rows_from): a day added recomputes one day of 24-bucket rows but only the new hours of the finer
-- ones. (page_rows_from(), the earliest of them, is where the export to SQLite rewrites from.)
CREATE OR REPLACE TABLE heatmap_resolutions AS
SELECT t * param('time_bucket_s')::BIGINT AS time_bucket_s, p * param('price_bucket_usd') AS price_bucket_usd
FROM unnest([1, 4, 24]) AS times(t) CROSS JOIN unnest([1, 2, 5, 10]) AS prices(p)
ORDER BY time_bucket_s, price_bucket_usd;
CREATE OR REPLACE MACRO page_rows_from() AS
    time_bucket(to_seconds(24 * param('time_bucket_s')::BIGINT), first_bucket_rebuilt());
CREATE TABLE IF NOT EXISTS heatmap_rows (
    model VARCHAR, symbol VARCHAR, time_bucket_s BIGINT, price_bucket_usd DOUBLE, ts TIMESTAMP, cells BIGINT,
    cumulative_cells BIGINT, price_bucket_first DOUBLE, alive_kusd VARCHAR, long_usd_total DOUBLE,
    short_usd_total DOUBLE, price_open DOUBLE, price_high DOUBLE, price_low DOUBLE, price_close DOUBLE);
CREATE TABLE IF NOT EXISTS heatmap_rows_by_leverage (
    model VARCHAR, symbol VARCHAR, leverage INTEGER, time_bucket_s BIGINT, price_bucket_usd DOUBLE, ts TIMESTAMP,
    cells BIGINT, price_bucket_first DOUBLE, alive_kusd VARCHAR, long_usd_total DOUBLE, short_usd_total DOUBLE,
    price_open DOUBLE, price_high DOUBLE, price_low DOUBLE, price_close DOUBLE);
DELETE FROM heatmap_rows WHERE ts >= time_bucket(to_seconds(time_bucket_s), first_bucket_rebuilt());
DELETE FROM heatmap_rows_by_leverage WHERE ts >= time_bucket(to_seconds(time_bucket_s), first_bucket_rebuilt());
-- The rows of one time bucket and of the price buckets listed (multiples of the base one; NULL: all four), so
-- that one aggregate holds a part of them: the four price resolutions of all time buckets at once held 12
-- copies of the heatmap in one aggregate, and at the base time bucket, with each tier's rows, one price bucket at
-- a time holds half as much. Each tier's rows come at the base time bucket only, from alive_cells: a coarser
-- bucket's row is recomputed from its start, which lies before rebuild_from(), where alive_cells holds nothing
-- (keeping every tier's cells for those rows would persist the heatmap's cells once per tier, and every build
-- would write them and compute those rows too).
CREATE OR REPLACE TEMP MACRO heatmap_rows_at(time_bucket_s_, price_buckets) AS TABLE
WITH times AS (   -- the time bucket, and its first time rebuilt
    SELECT time_bucket_s_ AS time_bucket_s, time_bucket(to_seconds(time_bucket_s_), first_bucket_rebuilt()) AS rows_from
),
resolutions AS (
    SELECT r.*, t.rows_from FROM heatmap_resolutions r JOIN times t USING (time_bucket_s)
    WHERE price_buckets IS NULL OR list_contains(price_buckets, r.price_bucket_usd / param('price_bucket_usd'))
),
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
totals AS (         -- each time's alive volume at every price, over every tier (leverage 0) and where it lies, and per
                    -- tier
    SELECT h.model, h.symbol, 0 AS leverage, r.time_bucket_s, time_bucket(to_seconds(r.time_bucket_s), h.ts) AS ts,
           sum(h.long_usd) AS long_usd, sum(h.short_usd) AS short_usd,
           min(h.price_bucket) AS lowest_bucket, max(h.price_bucket) AS highest_bucket
    FROM heatmap h JOIN times r ON h.ts >= r.rows_from
    WHERE h.ts >= page_rows_from() GROUP BY ALL
    UNION ALL
    SELECT a.model, a.symbol, a.leverage, time_bucket_s_, a.start_ts,
           coalesce(sum(a.alive_volume_usd) FILTER (a.side = 'long'), 0),
           coalesce(sum(a.alive_volume_usd) FILTER (a.side = 'short'), 0), NULL, NULL
    FROM alive_cells a WHERE time_bucket_s_ = param('time_bucket_s') AND a.start_ts >= first_bucket_rebuilt() GROUP BY ALL
),
windows AS (        -- each time's window of price buckets at each price resolution (with no trade in the bucket:
                    -- every bucket alive), which its tiers' rows share, and its price
    SELECT t.model, t.symbol, t.time_bucket_s, r.price_bucket_usd, t.ts, n.n,
           coalesce(floor(p.price_low * (1 - param('heatmap_margin_pct') / 100) / r.price_bucket_usd),
                    floor(t.lowest_bucket / r.price_bucket_usd))::BIGINT AS lo,
           coalesce(floor(p.price_high * (1 + param('heatmap_margin_pct') / 100) / r.price_bucket_usd),
                    floor(t.highest_bucket / r.price_bucket_usd))::BIGINT AS hi,
           p.price_open, p.price_high, p.price_low, p.price_close
    FROM totals t
    JOIN resolutions r USING (time_bucket_s)
    JOIN base_buckets n USING (symbol, time_bucket_s, ts)
    LEFT JOIN prices p USING (symbol, time_bucket_s, ts)
    WHERE t.leverage = 0
),
numbered AS (SELECT *, row_number() OVER () AS row_id FROM windows),   -- (a row's number, for the cells)
cells AS (          -- the volume of each bucket of a window, over every tier (leverage 0) and per tier, in thousands
                    -- of USDT: each cell placed in the window of its time at every price resolution, by the number of
                    -- its row (grouped by the window's columns instead, the layer took 40 % longer)
    SELECT w.row_id, h.leverage, floor(h.price_bucket / w.price_bucket_usd)::BIGINT AS b,
           round(sum(h.usd) / any_value(w.n) / 1000)::BIGINT AS kusd
    FROM (SELECT model, symbol, ts, 0 AS leverage, price_bucket, long_usd + short_usd AS usd FROM heatmap
          UNION ALL
          SELECT model, symbol, start_ts, leverage, bucket_index * param('price_bucket_usd'), alive_volume_usd
          FROM alive_cells WHERE time_bucket_s_ = param('time_bucket_s')) h
    JOIN numbered w ON w.model = h.model AND w.symbol = h.symbol AND w.ts = time_bucket(to_seconds(time_bucket_s_), h.ts)
                   AND floor(h.price_bucket / w.price_bucket_usd) BETWEEN w.lo AND w.hi
    WHERE h.ts >= time_bucket(to_seconds(time_bucket_s_), first_bucket_rebuilt()) AND h.ts >= page_rows_from()
    GROUP BY ALL
),
arrays AS (         -- each row's cells, in bucket order
    SELECT row_id, leverage, list(b ORDER BY b) AS buckets, list(kusd ORDER BY b) AS kusd
    FROM cells GROUP BY ALL
),
tiers AS (SELECT 0 AS leverage UNION ALL SELECT leverage FROM leverage_tiers WHERE time_bucket_s_ = param('time_bucket_s')),
new_rows AS (       -- every tier's row and each tier's, with its time's window: 0 where nothing is alive
    SELECT w.model, w.symbol, t.leverage, w.time_bucket_s, w.price_bucket_usd, w.ts, w.hi - w.lo + 1 AS cells,
           w.lo * w.price_bucket_usd AS price_bucket_first,
           -- (written from the cells with volume, each after the zeros of the buckets between it and the one before:
           -- joining every bucket of the window to them cost 4x more)
           '[' || CASE WHEN a.buckets IS NULL THEN repeat('0,', (w.hi - w.lo)::INTEGER) || '0'
                       ELSE array_to_string(list_transform(
                                list_zip(a.buckets, list_prepend(w.lo - 1, list_slice(a.buckets, 1, len(a.buckets) - 1)), a.kusd),
                                lambda x: repeat('0,', (x[1] - x[2] - 1)::INTEGER) || x[3]), ',')
                            || repeat(',0', (w.hi - a.buckets[-1])::INTEGER)
                  END || ']' AS alive_kusd,
           coalesce(s.long_usd, 0) / w.n AS long_usd_total, coalesce(s.short_usd, 0) / w.n AS short_usd_total,
           w.price_open, w.price_high, w.price_low, w.price_close
    FROM numbered w CROSS JOIN tiers t
    LEFT JOIN arrays a ON a.row_id = w.row_id AND a.leverage = t.leverage
    LEFT JOIN totals s ON s.model = w.model AND s.symbol = w.symbol AND s.leverage = t.leverage
                      AND s.time_bucket_s = w.time_bucket_s AND s.ts = w.ts
),
kept AS (           -- the cumulative cells of the last row kept at each resolution (a tier's row has its time's cells)
    SELECT h.model, h.symbol, h.time_bucket_s, h.price_bucket_usd, max(h.cumulative_cells) AS cumulative_cells
    FROM heatmap_rows h JOIN times USING (time_bucket_s) GROUP BY ALL
)
SELECT n.*, coalesce(k.cumulative_cells, 0) + sum(n.cells) OVER (PARTITION BY n.model, n.symbol, n.leverage, n.price_bucket_usd
                                                                   ORDER BY n.ts) AS cumulative_cells
FROM new_rows n LEFT JOIN kept k USING (model, symbol, time_bucket_s, price_bucket_usd);
-- Each time resolution's new rows: every tier's into heatmap_rows, each tier's into heatmap_rows_by_leverage.
CREATE OR REPLACE TEMP TABLE new_heatmap_rows AS FROM heatmap_rows_at(param('time_bucket_s')::BIGINT, [1]);
INSERT INTO new_heatmap_rows FROM heatmap_rows_at(param('time_bucket_s')::BIGINT, [2]);
INSERT INTO new_heatmap_rows FROM heatmap_rows_at(param('time_bucket_s')::BIGINT, [5, 10]);
INSERT INTO new_heatmap_rows FROM heatmap_rows_at(4 * param('time_bucket_s')::BIGINT, NULL);
INSERT INTO new_heatmap_rows FROM heatmap_rows_at(24 * param('time_bucket_s')::BIGINT, NULL);
INSERT INTO heatmap_rows BY NAME SELECT * EXCLUDE (leverage) FROM new_heatmap_rows WHERE leverage = 0
ORDER BY model, symbol, time_bucket_s, price_bucket_usd, ts;
INSERT INTO heatmap_rows_by_leverage BY NAME SELECT * EXCLUDE (cumulative_cells) FROM new_heatmap_rows WHERE leverage > 0
ORDER BY model, symbol, leverage, time_bucket_s, price_bucket_usd, ts;
DROP TABLE new_heatmap_rows;

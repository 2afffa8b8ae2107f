-- Staging a batch of files (stage.py): run on a connection of its own whose src_* views read those
-- files' rows only (each file's Parquet as read_csv wrote it, rows in file order), with the staging
-- views of sql/staging/staging.sql over them. A file with rows dropped here has its Parquet written again.
-- What is found here is found once per file and kept in the cache beside its Parquet, so a build never
-- reads its raw rows again.

-- Files whose keys do not strictly rise row by row: only these can hold a key twice. Binance writes
-- its rows in key order, so this is rarely any. Each row is compared with the row scanned before it
-- (a lag in scan order, with no sort: a lag ordered by row sorts every row of the file first). Scan
-- order is file order but for a few breaks (a join may move a block of rows); at a break, the row is
-- compared with the one before it in its file, found by a join. A missing key fails.
CREATE OR REPLACE TABLE stage_unordered AS
WITH scanned AS (
    SELECT file_id, src_rowid, order_key,
           lag(file_id) OVER () = file_id AND lag(src_rowid) OVER () = src_rowid - 1 AS follows,
           lag(order_key) OVER () AS previous_key
    FROM dq_rows
),
flagged AS MATERIALIZED (   -- the rows that fail, and the breaks in scan order
    SELECT * FROM scanned WHERE src_rowid > 0 AND NOT coalesce(follows AND order_key > previous_key, false)
)
SELECT file_id FROM flagged WHERE follows
UNION
SELECT b.file_id FROM flagged b JOIN dq_rows d ON d.file_id = b.file_id AND d.src_rowid = b.src_rowid - 1
WHERE NOT coalesce(b.follows, false) AND NOT coalesce(b.order_key > d.order_key, false);

-- Keys those files hold more than once (valid rows only: an invalid row is left out anyway). Counted
-- first, then described: a distinct count over every key of a day of trades costs seconds.
CREATE OR REPLACE TABLE stage_repeated_keys AS
WITH repeated AS (
    SELECT file_id, symbol, data_type, kline_interval, row_key FROM dq_rows SEMI JOIN stage_unordered USING (file_id)
    WHERE is_valid GROUP BY ALL HAVING count(*) > 1
)
SELECT file_id, symbol, data_type, kline_interval, row_key, count(*) AS n, count(DISTINCT row_hash) AS variants,
       min(ts) AS first_ts, max(ts) AS last_ts
FROM dq_rows SEMI JOIN repeated USING (file_id, symbol, data_type, kline_interval, row_key)
WHERE is_valid GROUP BY ALL;

-- Trades priced over 100 times above or below their file's median: no market trades a day a hundredfold
-- apart (flash crashes wick 90 %), and one such trade (a misplaced digit) would put the trade-flow
-- model's levels where nobody holds a position. (A bar's range is bounded alike: sql/staging/staging.sql.)
CREATE OR REPLACE TABLE stage_far_trades AS
WITH spread AS (   -- the files whose trades are that far apart at all (a min and a max: cheaper than
    -- every file's median)
    SELECT file_id FROM typed_trades WHERE is_valid GROUP BY file_id HAVING max(price) > 100 * min(price)
),
medians AS (
    SELECT file_id, approx_quantile(price, 0.5) AS median FROM typed_trades SEMI JOIN spread USING (file_id)
    WHERE is_valid GROUP BY file_id
)
SELECT t.file_id, t.symbol, t.data_type, t.ts, t.src_rowid, m.median
FROM typed_trades t JOIN medians m USING (file_id)
WHERE t.is_valid AND NOT t.price BETWEEN m.median / 100 AND m.median * 100;

-- The rows left out of the Parquet: invalid ones, far trades, and every copy of a key after its first in
-- the file. (A row is its file and rowid: a batch may hold files of several src_* tables, each counting its rowids.)
CREATE OR REPLACE TABLE stage_dropped AS
SELECT file_id, src_rowid FROM dq_rows WHERE NOT coalesce(is_valid, false)
UNION ALL
SELECT file_id, src_rowid FROM stage_far_trades
UNION ALL
SELECT file_id, src_rowid FROM dq_rows d SEMI JOIN stage_repeated_keys k USING (file_id, symbol, data_type, kline_interval, row_key)
WHERE d.is_valid
QUALIFY row_number() OVER (PARTITION BY d.file_id, d.symbol, d.data_type, d.kline_interval, d.row_key
                           ORDER BY d.src_rowid) > 1;

-- What was read and what is staged: the staged rows' time range decides which files a build must
-- deduplicate against each other (src_files.overlapping, sql/staging/staging.sql).
CREATE OR REPLACE TABLE stage_stats AS
SELECT file_id, count(*) AS rows_read, count(*) FILTER (WHERE kept) AS rows_staged,
       min(ts) FILTER (WHERE kept) AS first_ts, max(ts) FILTER (WHERE kept) AS last_ts
FROM (SELECT d.file_id, d.ts, x.src_rowid IS NULL AS kept
      FROM dq_rows d LEFT JOIN stage_dropped x ON x.file_id = d.file_id AND x.src_rowid = d.src_rowid)
GROUP BY file_id;

-- Each file's data-quality rows, in data_quality's shape (sql/quality/data_quality.sql adds the file name).
CREATE OR REPLACE TABLE stage_quality AS
WITH unparseable AS (
    SELECT f.file_id, f.symbol, f.data_type, coalesce(f.kline_interval, '') AS kline_interval, min(r.line) AS line,
           'unparseable_rows' AS problem, 'error' AS severity,
           format('{} rows could not be read and were left out; first at line {}: "{}" ({})',
                  count(DISTINCT r.line), min(r.line), arg_min(r.csv_line, r.line)[:100],
                  arg_min(r.error_message, r.line)[:160]) AS detail,
           count(DISTINCT r.line) AS rows_affected, NULL::TIMESTAMP AS first_ts, NULL::TIMESTAMP AS last_ts
    FROM src_rejects r JOIN src_files f USING (file_id) GROUP BY ALL
),
left_out_rows AS (   -- rows left out of the models: invalid values, a row that disagrees with its file's name, far trades
    SELECT d.file_id, d.symbol, d.data_type, d.kline_interval, d.mismatch, count(*) AS n, min(d.found) AS found,
           min(d.ts) AS first_ts, max(d.ts) AS last_ts, any_value(f.period) AS period,
           min(d.src_rowid) + 1 + any_value(f.has_header::INT) AS guess   -- its first row's place, past the header
    FROM (SELECT file_id, symbol, data_type, kline_interval, mismatch, found, ts, src_rowid
          FROM dq_rows WHERE NOT coalesce(is_valid, false)
          UNION ALL
          SELECT file_id, symbol, data_type, '', 'trade_price_outlier', round(median, 8)::VARCHAR, ts, src_rowid
          FROM stage_far_trades) d
    JOIN src_files f USING (file_id) GROUP BY ALL
),
left_out AS (       -- and that row's line: past the lines DuckDB could not read before it, counted twice over
    SELECT l.*, l.guess + (SELECT count(*) FROM src_rejects r WHERE r.file_id = l.file_id AND r.line <= l.guess
                               + (SELECT count(*) FROM src_rejects q WHERE q.file_id = l.file_id AND q.line <= l.guess)) AS line
    FROM left_out_rows l
),
invalid AS (
    SELECT file_id, symbol, data_type, kline_interval, line,
           CASE data_type WHEN 'metrics' THEN 'non_positive_open_interest'
                          WHEN 'fundingRate' THEN 'invalid_funding_rate'
                          WHEN 'liquidationSnapshot' THEN 'invalid_liquidation'
                          WHEN 'forceOrder' THEN 'invalid_liquidation'
                          WHEN 'liquidationsAggregated' THEN 'invalid_liquidation'
                          WHEN 'aggTrades' THEN 'non_positive_trade' WHEN 'trades' THEN 'non_positive_trade'
                          WHEN 'recordingGaps' THEN 'recording_gap'
                          ELSE 'invalid_price_bar' END,
           'warning', CASE WHEN data_type = 'recordingGaps'
                           THEN format('{} gaps whose times cannot be read, or that end before they start: nothing '
                                       'was recorded for a time unknown; first at line {}', n, line)
                           ELSE format('{} rows with zero, negative, missing, not finite (nan, inf) or inconsistent '
                                       'values left out of the models; first at line {}', n, line) END,
           n, first_ts, last_ts
    FROM left_out WHERE mismatch IS NULL
),
mismatched AS (     -- the file's name says one thing and its rows another (a wrong or renamed file); far trades
    SELECT file_id, symbol, data_type, kline_interval, line, mismatch,
           CASE mismatch WHEN 'trade_price_outlier' THEN 'warning' ELSE 'error' END,
           CASE mismatch
               WHEN 'trade_price_outlier' THEN format('{} trades priced over 100 times above or below the file''s median '
                                                      'price {} left out; first at line {}', n, found, line)
               WHEN 'outside_file_period' THEN format('{} rows dated outside the file''s period {} (from {} to {}) left out; '
                                                      'first at line {}', n, period, first_ts, last_ts, line)
               WHEN 'symbol_mismatch' THEN format('{} rows for {} in a file named for {} left out; first at line {}',
                                                  n, found, symbol, line)
               ELSE format('{} bars {} ms long in a file named for {} bars left out; first at line {}',
                           n, found, kline_interval, line) END,
           n, first_ts, last_ts
    FROM left_out WHERE mismatch IS NOT NULL
),
recorded_gaps AS (  -- the gaps of a forceOrder recording, each with its line (past the header)
    SELECT g.*, g.src_rowid + 1 + f.has_header::INT AS guess, epoch(g.to_ts - g.from_ts) AS seconds
    FROM typed_recording_gaps g JOIN src_files f USING (file_id) WHERE g.is_valid
),
recording_gaps AS ( -- one row each, so that no score rests on a hole unsaid: the stream replays nothing
    SELECT file_id, '*', 'forceOrder', '', guess + (SELECT count(DISTINCT r.line) FROM src_rejects r
               WHERE r.file_id = g.file_id AND r.line <= g.guess + (SELECT count(DISTINCT q.line) FROM src_rejects q
                                                                    WHERE q.file_id = g.file_id AND q.line <= g.guess)),
           'recording_gap', 'warning',
           format('a gap in the recording from {} to {} ({}): {}', from_ts, to_ts,
                  CASE WHEN seconds < 120 THEN round(seconds, 1) || ' s' WHEN seconds < 7200 THEN round(seconds / 60, 1)
                       || ' min' ELSE round(seconds / 3600, 1) || ' h' END, reason),
           NULL::BIGINT, from_ts, to_ts
    FROM recorded_gaps g
),
repeated AS (
    -- The same key twice in one file is a fault of that file (Binance repeats rows across files, not
    -- within one): one of each is used, the first.
    SELECT file_id, symbol, data_type, kline_interval, NULL::BIGINT, 'duplicate_rows', 'warning',
           format('{} rows appear more than once in this file{}; one of each is used', count(*),
                  CASE WHEN max(variants) > 1 THEN format(' ({} with different values: the first is used)',
                                                          count(*) FILTER (WHERE variants > 1)) ELSE '' END),
           sum(n - 1), min(first_ts), max(last_ts)
    FROM stage_repeated_keys GROUP BY ALL
)
SELECT * FROM unparseable UNION ALL SELECT * FROM invalid UNION ALL SELECT * FROM mismatched
UNION ALL SELECT * FROM repeated UNION ALL SELECT * FROM recording_gaps;

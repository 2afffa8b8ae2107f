-- Data quality and coverage: every problem found in the inputs, one row each, so that nothing is
-- dropped or guessed silently. What is wrong within one file (unparseable rows, invalid values, keys
-- repeated in it) was found when the file was staged (stage_quality, sql/staging/files.sql); what
-- is wrong across files and in the series is found here, from the staging views.
-- severity: 'error'   data could not be used at all (file quarantined, rows unparseable);
--           'warning' data is missing, left out of the models, or suspicious;
--           'info'    a known quirk of Binance's files that the build handled (e.g. overlapping files).

-- The deduplicated, valid time series, each row with the step from the previous one: for the cadence,
-- gaps and outliers (the value: open interest, or a bar's close). One pass over the series, read thrice.
CREATE OR REPLACE TABLE dq_series_steps AS
WITH series AS (
    SELECT symbol, 'metrics' AS data_type, '' AS kline_interval, ts, open_interest AS value, file_id FROM stg_open_interest
    UNION ALL SELECT symbol, 'fundingRate', '', ts, NULL, file_id FROM stg_funding_rates
    UNION ALL SELECT symbol, data_type, coalesce(kline_interval, ''), ts, close, file_id FROM stg_klines_all
)
SELECT *, lag(ts) OVER w AS previous_ts, epoch(ts - lag(ts) OVER w)::BIGINT AS step_s, lag(value) OVER w AS previous
FROM series WINDOW w AS (PARTITION BY symbol, data_type, kline_interval ORDER BY ts);

-- The regular spacing of each series: the most common step (5 min for metrics, 8 h for funding ...).
CREATE OR REPLACE TABLE dq_cadence AS
SELECT symbol, data_type, kline_interval, mode(step_s) AS cadence_s
FROM dq_series_steps WHERE step_s > 0 GROUP BY ALL;

-- Every kind of problem a build can report, and what it means: the one list (sql/seeds/data_quality_problems.csv)
-- that the stored query's check of `problem` and the docs read too.
CREATE OR REPLACE TABLE data_quality_kinds AS
SELECT * FROM read_csv(getvariable('seeds_dir') || '/data_quality_problems.csv', header = true, auto_detect = false,
                       columns = {'problem': 'VARCHAR', 'meaning': 'VARCHAR'});

CREATE OR REPLACE TABLE data_quality AS
WITH
files AS (SELECT * FROM src_files),
quarantined AS (   -- and skipped: a CSV beside its zip (an unzipped download), which the zip stands for
    SELECT symbol, data_type, kline_interval, path AS file, NULL::BIGINT AS line, problem,
           CASE problem WHEN 'unzipped_copy' THEN 'info' WHEN 'partial_replaced' THEN 'info'
                        WHEN 'csv_differs_from_zip' THEN 'warning' ELSE 'error' END
               AS severity,
           detail, NULL::BIGINT AS rows_affected, NULL::TIMESTAMP AS first_ts, NULL::TIMESTAMP AS last_ts
    FROM files WHERE status IN ('quarantined', 'skipped')
),
partial_days AS (   -- days so far from Binance's REST API (`fetch --today`, NAME.partial.csv), read until its file comes
    SELECT symbol, data_type, kline_interval, path, NULL::BIGINT, 'partial_day', 'info',
           format('{} {} {} so far, from Binance''s REST API up to {}: incomplete until `fetch` gets Binance''s file '
                  'for it, which replaces this one', symbol, data_type, period, strftime(last_ts, '%Y-%m-%d %H:%M:%S')),
           rows_staged, first_ts, last_ts
    FROM files WHERE status = 'loaded' AND path LIKE '%.partial.csv'
),
in_file AS (        -- found when each file was staged (of a recording's gaps, those that meet --start/--end)
    SELECT coalesce(q.symbol, f.symbol), q.data_type, q.kline_interval, f.path, q.line, q.problem, q.severity, q.detail,
           q.rows_affected, q.first_ts, q.last_ts
    FROM stage_quality q JOIN files f USING (file_id)
    WHERE q.problem <> 'recording_gap' OR q.first_ts IS NULL
       OR coalesce(q.last_ts >= (SELECT start_ts FROM build_window), true)
          AND coalesce(q.first_ts < (SELECT end_ts FROM build_window), true)
),
other_symbols AS (  -- forceOrder recordings hold every symbol: the rows of symbols not built are left out
    -- (and an aggregated export without a symbol column, when the build holds several symbols)
    SELECT '*', r.source, NULL, f.path, NULL::BIGINT, 'other_symbols', 'info',
           format('{} rows of {} symbols without market data in this build left out', count(*),
                  count(DISTINCT coalesce(r.symbol, '?'))), count(*), min(r.ts), max(r.ts)
    FROM typed_realized_liquidations r JOIN files f USING (file_id)
    -- (realized_liquidations: stg_realized_liquidations as sql/backtest/windows.sql wrote it, read once)
    WHERE r.is_valid AND coalesce(r.symbol NOT IN (SELECT symbol FROM realized_liquidations), true) GROUP BY ALL
),
horizons_not_scored AS (   -- backtest horizons the data cannot score, or has no window of (sql/backtest/windows.sql)
    SELECT symbol, data_type, kline_interval, file, NULL::BIGINT, 'horizon_not_scored', 'warning', detail, NULL::BIGINT,
           first_ts, last_ts
    FROM backtest_not_scored
),
duplicate_keys AS ( -- keys in more than one file (each file is unique in itself once staged)
    SELECT symbol, data_type, kline_interval, row_key, count(*) AS n, count(DISTINCT row_hash) AS variants,
           list(DISTINCT file_id ORDER BY file_id) AS file_ids, min(ts) AS ts
    FROM dq_rows WHERE in_build_window(ts) AND overlapping
    GROUP BY ALL HAVING count(DISTINCT file_id) > 1
),
duplicates AS (
    -- The same row in two files is how Binance writes metrics (a day's file repeats the next day's
    -- 00:00) or overlapping downloads; the same key with other values is a conflict.
    SELECT symbol, data_type, kline_interval, file, NULL::BIGINT, problem,
           CASE problem WHEN 'overlapping_files' THEN 'info' ELSE 'warning' END,
           format(CASE problem
                  WHEN 'conflicting_duplicates' THEN '{} keys appear with different values in several files; the first file''s row is used'
                  ELSE '{} rows appear in more than one file with the same values; one of each is used' END,
                  count(*)),
           sum(n - 1), min(ts), max(ts)
    FROM (
        SELECT d.*, CASE WHEN d.variants > 1 THEN 'conflicting_duplicates' ELSE 'overlapping_files' END AS problem,
               CASE WHEN d.variants > 1 THEN f.path END AS file
        FROM duplicate_keys d JOIN files f ON f.file_id = d.file_ids[1]
    )
    GROUP BY symbol, data_type, kline_interval, file, problem
),
covered_days AS (   -- the days each loaded file covers: one for a daily file, the month for a monthly one
    SELECT DISTINCT symbol, data_type, coalesce(kline_interval, '') AS kline_interval, unnest(generate_series(
               strptime(rpad(period, 10, '-01'), '%Y-%m-%d'),
               CASE WHEN len(period) = 10 THEN strptime(period, '%Y-%m-%d')
                    ELSE strptime(period || '-01', '%Y-%m-%d') + INTERVAL 1 MONTH - INTERVAL 1 DAY END,
               INTERVAL 1 DAY))::DATE AS day
    FROM files WHERE status = 'loaded' AND period <> ''   -- realized-liquidation exports have no period
),
spans AS (
    SELECT symbol, data_type, kline_interval,
           greatest(min(day), coalesce((SELECT start_ts FROM build_window)::DATE, min(day))) AS first_day,
           least(max(day), coalesce((SELECT end_ts FROM build_window)::DATE - 1, max(day))) AS last_day
    FROM covered_days GROUP BY ALL
),
missing_days AS (
    SELECT s.symbol, s.data_type, s.kline_interval, NULL AS file, NULL::BIGINT, 'missing_day', 'warning',
           format('no {} file for {} (expected {}-{}-{}.zip)', s.data_type, g.day, s.symbol,
                  coalesce(nullif(s.kline_interval, ''), s.data_type), g.day),
           NULL::BIGINT, g.day::TIMESTAMP, g.day::TIMESTAMP + INTERVAL 1 DAY - INTERVAL 1 SECOND
    FROM spans s, LATERAL (SELECT unnest(generate_series(s.first_day, s.last_day, INTERVAL 1 DAY))::DATE AS day) g
    WHERE NOT EXISTS (SELECT 1 FROM covered_days c WHERE c.symbol = s.symbol AND c.data_type = s.data_type
                      AND c.kline_interval = s.kline_interval AND c.day = g.day)
),
gaps AS (
    SELECT s.symbol, s.data_type, s.kline_interval, f.path, NULL::BIGINT, 'gap', 'warning',
           format('no rows between {} and {}: a gap of {} in a series with a row every {}',
                  s.previous_ts, s.ts, duration_text(s.step_s), duration_text(c.cadence_s)),
           s.step_s // c.cadence_s - 1, s.previous_ts, s.ts
    FROM dq_series_steps s JOIN dq_cadence c USING (symbol, data_type, kline_interval) JOIN files f USING (file_id)
    -- funding may move from 8 h to 4 h or 1 h: only a step longer than 8 h is a gap there
    WHERE s.step_s > CASE WHEN s.data_type = 'fundingRate' THEN greatest(c.cadence_s, 28800) ELSE c.cadence_s END
),
outliers AS (
    -- Moves no real market makes in one step: price by more than 15 % per bar, open interest by
    -- more than 30 % per row. Kept in the models (they may be real), reported to be looked at.
    SELECT symbol, data_type, kline_interval, NULL, NULL::BIGINT,
           CASE WHEN data_type = 'metrics' THEN 'open_interest_outlier' ELSE 'price_outlier' END, 'warning',
           format('{} changed by {}% in one step, from {} to {}', CASE WHEN data_type = 'metrics'
                  THEN 'open interest' ELSE 'close price' END, round(100 * (value / previous - 1), 1), previous_ts, ts),
           1::BIGINT, previous_ts, ts
    FROM dq_series_steps
    WHERE data_type <> 'fundingRate'
      AND abs(ln(value / previous)) > CASE WHEN data_type = 'metrics' THEN ln(1.3) ELSE ln(1.15) END
)
SELECT symbol, data_type, nullif(kline_interval, '') AS kline_interval, file, line, problem, severity, detail, rows_affected,
       first_ts, last_ts
FROM (SELECT * FROM quarantined UNION ALL SELECT * FROM partial_days UNION ALL SELECT * FROM in_file
      UNION ALL SELECT * FROM duplicates UNION ALL SELECT * FROM missing_days UNION ALL SELECT * FROM gaps
      UNION ALL SELECT * FROM outliers UNION ALL SELECT * FROM other_symbols UNION ALL SELECT * FROM horizons_not_scored)
ORDER BY CASE severity WHEN 'error' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, symbol, data_type, first_ts, file;

-- A kind the list lacks fails the build: the list, the 400 rule and the docs would not know it.
SELECT error('data_quality writes problem kinds that sql/seeds/data_quality_problems.csv does not list: '
             || string_agg(DISTINCT problem, ', '))
FROM data_quality WHERE problem NOT IN (SELECT problem FROM data_quality_kinds)
HAVING count(*) > 0;

-- What data there is, per symbol and file type: the health check of a build.
CREATE OR REPLACE TABLE coverage AS
WITH trade_files_counted AS (
    SELECT * FROM src_files
    WHERE data_type IN ('aggTrades', 'trades') AND status = 'loaded' AND rows_staged IS NOT NULL
      AND NOT overlapping AND inside_window
),
rows_by_series_parts AS (
    SELECT symbol, 'metrics' AS data_type, '' AS kline_interval, min(ts) AS first_ts, max(ts) AS last_ts,
           count(*) AS rows FROM stg_open_interest GROUP BY ALL
    UNION ALL SELECT symbol, 'fundingRate', '', min(ts), max(ts), count(*) FROM stg_funding_rates GROUP BY ALL
    UNION ALL SELECT symbol, data_type, coalesce(kline_interval, ''), min(ts), max(ts), count(*) FROM stg_klines_all GROUP BY ALL
    -- trades: a file that overlaps no other and lies inside --start/--end was counted when staged;
    -- only the others are counted row by row (a month of trades is tens of millions of rows)
    UNION ALL SELECT symbol, data_type, '', min(ts), max(ts), count(*) FROM stg_trades
    WHERE overlapping OR NOT inside_window GROUP BY ALL
    UNION ALL SELECT symbol, data_type, '', min(first_ts), max(last_ts), sum(rows_staged) FROM trade_files_counted GROUP BY ALL
    UNION ALL SELECT symbol, source, '', min(ts), max(ts), count(*) FROM realized_liquidations GROUP BY ALL
),
rows_by_series AS (
    SELECT symbol, data_type, kline_interval, min(first_ts) AS first_ts, max(last_ts) AS last_ts, sum(rows)::BIGINT AS rows
    FROM rows_by_series_parts GROUP BY ALL
),
file_counts AS (
    SELECT symbol, data_type, coalesce(kline_interval, '') AS kline_interval,
           count(*) FILTER (status = 'loaded') AS files,
           count(*) FILTER (status = 'quarantined') AS files_quarantined
    FROM src_files WHERE symbol <> '*' GROUP BY ALL
    UNION ALL   -- files of realized liquidations for any symbols: counted for each symbol they hold
    SELECT symbol, source, '', count(DISTINCT file_id), 0 FROM stg_realized_liquidations
    WHERE source IN ('forceOrder', 'liquidationsAggregated') GROUP BY ALL
)
SELECT symbol, data_type, nullif(kline_interval, '') AS kline_interval, r.first_ts, r.last_ts, coalesce(r.rows, 0) AS rows,
       fc.files, fc.files_quarantined, c.cadence_s,
       -- the models use the finest kline interval of each type, and every other type as it is
       fc.kline_interval = '' OR EXISTS (SELECT 1 FROM stg_kline_intervals_used u WHERE u.symbol = fc.symbol
           AND u.data_type = fc.data_type AND u.kline_interval = fc.kline_interval) AS used_by_models
FROM file_counts fc
LEFT JOIN rows_by_series r USING (symbol, data_type, kline_interval)
LEFT JOIN dq_cadence c USING (symbol, data_type, kline_interval);

-- Staging layer. Typed, UTC, deduplicated views over the sources, with Binance's names turned
-- into the domain's (open_interest, funding_rate, taker_side ...). Two steps per file type:
--   typed_*  every row, with its symbol and UTC time, a key and a hash of its values;
--   stg_*    one row per key (the first file wins), limited to --start/--end, with rows that
--            cannot be right (zero or negative prices, open interest or quantities) left out.
-- The same views serve twice. While a file is staged (stage.py, sql/staging/files.sql), they
-- hold that file alone: its invalid rows and repeated keys are counted and left out of its Parquet.
-- In a build they read the staged Parquet, where only keys repeated across files remain to drop.
-- Nothing is dropped silently: data_quality (sql/quality/data_quality.sql) reports every row left out.

-- Each file's period as times: a daily file holds its day, a monthly file its month, each up to and
-- including the next period's first instant (metrics were labelled at the end of each 5 minutes until
-- mid-2026, so a day's file ends with the next day's 00:00 row). A row outside it
-- disagrees with the file's name and is left out, reported: one such row (a time in the year 2100)
-- would otherwise stretch every series, and the heatmap's time grid, over decades. Files without a
-- period (realized-liquidation exports) have no bounds.
CREATE OR REPLACE VIEW file_periods AS
SELECT *, try_strptime(rpad(period, 10, '-01'), '%Y-%m-%d') AS period_start_ts,
       try_strptime(rpad(period, 10, '-01'), '%Y-%m-%d')
           + CASE WHEN len(period) = 10 THEN INTERVAL 1 DAY ELSE INTERVAL 1 MONTH END AS period_end_ts
FROM src_files;

-- Why a row disagrees with its file's name (NULL: it agrees): dated outside the file's period, or
-- (where the rows say it) for another symbol, or bars of another length than the named interval.
CREATE OR REPLACE MACRO name_mismatch(ts, period_start_ts, period_end_ts, row_symbol := NULL, file_symbol := NULL,
                                       bar_ms := NULL, kline_interval := NULL) AS
    CASE WHEN NOT (ts BETWEEN period_start_ts AND period_end_ts) THEN 'outside_file_period'
         WHEN row_symbol <> file_symbol THEN 'symbol_mismatch'
         -- a bar closes 1 ms before the next opens (spot files from 2025 count µs: 1 µs, or 1 ms written in
         -- µs); months vary in length
         WHEN NOT (bar_ms = interval_seconds(kline_interval) * 1000
                   OR bar_ms BETWEEN interval_seconds(kline_interval) * 1000000 - 999 AND interval_seconds(kline_interval) * 1000000)
              AND NOT kline_interval LIKE '%M' THEN 'interval_mismatch' END;

CREATE OR REPLACE MACRO in_build_window(ts) AS
    ts >= coalesce((SELECT start_ts FROM build_window), '-infinity'::TIMESTAMP)
    AND ts < coalesce((SELECT end_ts FROM build_window), 'infinity'::TIMESTAMP);

-- The series (open interest, funding, bars) are tables, not views: up to ten statements of the layers
-- after this read each (as views, each would decode the Parquet again, and a year is 365 files of
-- a type). Persisted: a build deletes a series' rows from rebuild_from() on and adds them again, read
-- from the files that hold any (the filter on file_last_ts skips the others whole; a file whose range
-- is unknown is read); the rows before are the previous build's, from files unchanged since (build.py
-- rebuild_from). What is added: the valid rows inside --start/--end, one per key (the first file's).
CREATE OR REPLACE MACRO series_rows(typed_view) AS TABLE
SELECT * EXCLUDE (series, is_valid, mismatch, found, row_hash, overlapping, file_last_ts, src_rowid) FROM query_table(typed_view)
WHERE is_valid AND in_build_window(ts) AND coalesce(file_last_ts, 'infinity') >= rebuild_from() AND ts >= rebuild_from()
QUALIFY row_number() OVER (PARTITION BY symbol, series, ts ORDER BY file_id) = 1;

CREATE OR REPLACE VIEW typed_open_interest AS
SELECT f.symbol, 'metrics' AS series,
       m.create_time                             AS ts,                    -- label of the 5-minute row, UTC
       m.sum_open_interest                       AS open_interest,         -- coins
       m.sum_open_interest_value                 AS open_interest_usd,     -- USDT
       m.count_long_short_ratio                  AS long_short_account_ratio,
       m.count_toptrader_long_short_ratio        AS top_trader_account_ratio,
       m.sum_toptrader_long_short_ratio          AS top_trader_position_ratio,
       m.sum_taker_long_short_vol_ratio          AS taker_buy_sell_ratio,
       -- (isfinite: DuckDB reads nan and inf as numbers, and orders NaN above every number, so nan > 0)
       name_mismatch(m.create_time, f.period_start_ts, f.period_end_ts, row_symbol := m.symbol, file_symbol := f.symbol)
           AS mismatch, m.symbol AS found,
       m.create_time IS NOT NULL AND mismatch IS NULL AND m.sum_open_interest > 0 AND m.sum_open_interest_value > 0
           AND isfinite(m.sum_open_interest) AND isfinite(m.sum_open_interest_value)
           AND coalesce(isfinite(m.count_long_short_ratio) AND isfinite(m.count_toptrader_long_short_ratio)
                        AND isfinite(m.sum_toptrader_long_short_ratio) AND isfinite(m.sum_taker_long_short_vol_ratio),
                        true) AS is_valid,
       hash(m.sum_open_interest, m.sum_open_interest_value, m.count_long_short_ratio,
            m.count_toptrader_long_short_ratio, m.sum_toptrader_long_short_ratio,
            m.sum_taker_long_short_vol_ratio)    AS row_hash,
       f.overlapping, f.last_ts AS file_last_ts, m.file_id, m.rowid AS src_rowid
FROM src_metrics m JOIN file_periods f USING (file_id);

CREATE TABLE IF NOT EXISTS stg_open_interest AS FROM series_rows('typed_open_interest') LIMIT 0;
DELETE FROM stg_open_interest WHERE ts >= rebuild_from();
INSERT INTO stg_open_interest FROM series_rows('typed_open_interest');

CREATE OR REPLACE VIEW typed_funding_rates AS
SELECT f.symbol, 'fundingRate' AS series,
       ts_from_epoch(r.calc_time)  AS ts,
       r.funding_interval_hours,
       r.last_funding_rate         AS funding_rate,   -- per interval; positive: longs pay shorts
       name_mismatch(ts, f.period_start_ts, f.period_end_ts) AS mismatch, NULL::VARCHAR AS found,
       ts IS NOT NULL AND mismatch IS NULL AND r.last_funding_rate IS NOT NULL AND abs(r.last_funding_rate) < 0.05
           AS is_valid,
       hash(r.funding_interval_hours, r.last_funding_rate) AS row_hash,
       f.overlapping, f.last_ts AS file_last_ts, r.file_id, r.rowid AS src_rowid
FROM src_funding_rate r JOIN file_periods f USING (file_id);

CREATE TABLE IF NOT EXISTS stg_funding_rates AS FROM series_rows('typed_funding_rates') LIMIT 0;
DELETE FROM stg_funding_rates WHERE ts >= rebuild_from();
INSERT INTO stg_funding_rates FROM series_rows('typed_funding_rates');

-- Every kline type and interval present. data_type tells trade-price klines from markPriceKlines.
CREATE OR REPLACE VIEW typed_klines AS
SELECT f.symbol, f.data_type, f.kline_interval, f.data_type || ' ' || coalesce(f.kline_interval, '') AS series,
       interval_seconds(f.kline_interval) AS interval_s,
       ts_from_epoch(k.open_time) AS ts,                 -- open time of the bar, UTC
       k.open, k.high, k.low, k.close,
       k.volume, k.quote_volume AS quote_volume_usd, k.count AS trade_count,
       k.taker_buy_volume, k.taker_buy_quote_volume AS taker_buy_quote_volume_usd,
       name_mismatch(ts, f.period_start_ts, f.period_end_ts, bar_ms := k.close_time - k.open_time + 1,
                     kline_interval := f.kline_interval) AS mismatch,
       (k.close_time - k.open_time + 1)::VARCHAR AS found,
       ts IS NOT NULL AND mismatch IS NULL AND least(k.open, k.high, k.low, k.close) > 0 AND k.high >= greatest(k.open, k.close, k.low)
           AND k.low <= least(k.open, k.close)
           -- and at most 100 times its low: flash crashes wick 90 % (1 m bars of 2025-10-10), no market
           -- trades a minute over a hundredfold; such a bar (a misplaced digit) would take every price bucket
           -- between, and a single one made the backtest's lists overflow (2^32 buckets for a high of 1e12)
           AND k.high <= 100 * k.low
           AND isfinite(k.open + k.high + k.low + k.close) AND coalesce(isfinite(k.volume + k.quote_volume), true)
           AS is_valid,
       hash(k.open, k.high, k.low, k.close, k.volume, k.quote_volume, k.count) AS row_hash,
       f.overlapping, f.last_ts AS file_last_ts, k.file_id, k.rowid AS src_rowid
FROM src_klines k JOIN file_periods f USING (file_id);

CREATE TABLE IF NOT EXISTS stg_klines_all AS FROM series_rows('typed_klines') LIMIT 0;
DELETE FROM stg_klines_all WHERE ts >= rebuild_from();
INSERT INTO stg_klines_all FROM series_rows('typed_klines');

-- The finest interval present for each symbol and kline type is the one the models use
-- (real files are 1m; some exports are coarser). coverage.used says which that was.
CREATE OR REPLACE VIEW stg_kline_intervals_used AS
SELECT symbol, data_type, arg_min(kline_interval, interval_s) AS kline_interval, min(interval_s) AS interval_s
FROM stg_klines_all GROUP BY ALL;

CREATE OR REPLACE VIEW stg_price_klines AS          -- last-price bars at the finest interval
SELECT k.* FROM stg_klines_all k JOIN stg_kline_intervals_used USING (symbol, data_type, kline_interval)
WHERE data_type = 'klines';

CREATE OR REPLACE VIEW stg_mark_price_klines AS     -- mark-price bars: what triggers liquidations
SELECT k.* EXCLUDE (volume, quote_volume_usd, trade_count, taker_buy_volume, taker_buy_quote_volume_usd)
FROM stg_klines_all k JOIN stg_kline_intervals_used USING (symbol, data_type, kline_interval)
WHERE data_type = 'markPriceKlines';

-- aggTrades and individual trades in one shape: each row is one taker fill.
CREATE OR REPLACE VIEW typed_trades AS
SELECT f.symbol, f.data_type, t.agg_trade_id AS trade_id, ts_from_epoch(t.transact_time) AS ts,
       t.price, t.quantity, t.price * t.quantity AS notional_usd,
       CASE WHEN t.is_buyer_maker THEN 'sell' ELSE 'buy' END AS taker_side,
       name_mismatch(ts, f.period_start_ts, f.period_end_ts) AS mismatch, NULL::VARCHAR AS found,
       ts IS NOT NULL AND mismatch IS NULL AND t.price > 0 AND t.quantity > 0 AND isfinite(t.price * t.quantity) AS is_valid,
       hash(t.price, t.quantity, t.transact_time, t.is_buyer_maker) AS row_hash, f.overlapping, f.inside_window,
       t.file_last_ts, t.file_id, t.rowid AS src_rowid
FROM src_agg_trades t JOIN file_periods f USING (file_id)
UNION ALL
SELECT f.symbol, f.data_type, t.id, ts_from_epoch(t.time) AS ts, t.price, t.qty, t.price * t.qty,
       CASE WHEN t.is_buyer_maker THEN 'sell' ELSE 'buy' END,
       name_mismatch(ts, f.period_start_ts, f.period_end_ts) AS mismatch, NULL::VARCHAR,
       ts IS NOT NULL AND mismatch IS NULL AND t.price > 0 AND t.qty > 0 AND isfinite(t.price * t.qty), hash(t.price, t.qty, t.time, t.is_buyer_maker), f.overlapping, f.inside_window,
       t.file_last_ts, t.file_id, t.rowid
FROM src_trades t JOIN file_periods f USING (file_id);

-- Files whose rows' time range meets another loaded file's of the same series (a monthly file beside
-- its daily ones, a day downloaded twice, metrics' next-day 00:00 row): only their keys can repeat
-- in a build, each file being unique in itself once staged. A file without a range (not staged)
-- counts as meeting every other. The typed views below carry this mark: a filter on a column of
-- src_files reaches the Parquet scan, which then skips the other files whole, where a
-- `file_id IN (subquery)` reads every trade first and only then filters.
UPDATE src_files SET
    overlapping = file_id IN (
        SELECT a.file_id
        FROM src_files a JOIN src_files b ON a.file_id <> b.file_id AND a.symbol = b.symbol AND a.data_type = b.data_type
            AND a.kline_interval IS NOT DISTINCT FROM b.kline_interval
            AND coalesce(a.first_ts <= b.last_ts AND b.first_ts <= a.last_ts, true)
        WHERE a.status = 'loaded' AND b.status = 'loaded'),
    inside_window = coalesce(in_build_window(first_ts) AND in_build_window(last_ts), false);

-- Trades are millions a day: deduplicating them all would hold a month in memory. Only the files
-- that overlap another are; the rest stream through.
CREATE OR REPLACE VIEW stg_trades AS
SELECT * EXCLUDE (is_valid, mismatch, found, row_hash, src_rowid) FROM typed_trades
WHERE is_valid AND in_build_window(ts) AND NOT overlapping
UNION ALL
SELECT * EXCLUDE (is_valid, mismatch, found, row_hash, src_rowid) FROM typed_trades
WHERE is_valid AND in_build_window(ts) AND overlapping
QUALIFY row_number() OVER (PARTITION BY symbol, data_type, trade_id ORDER BY file_id) = 1;

-- Realized liquidations, one row per event (or per period and side for aggregated exports), from
-- Binance's liquidationSnapshot files (USD-M, up to 2024-03-31), recorded forceOrder streams and
-- aggregated exports. side is the side liquidated: Binance's SELL liquidates a long.
CREATE OR REPLACE VIEW realized_rows AS
SELECT f.symbol, ts_from_epoch(l.time) AS ts,
       CASE l.side WHEN 'SELL' THEN 'long' WHEN 'BUY' THEN 'short' END AS side,
       coalesce(nullif(l.average_price, 0), l.price) AS price,
       coalesce(nullif(l.accumulated_fill_quantity, 0), l.original_quantity) AS quantity,
       coalesce(nullif(l.average_price, 0), l.price)
           * coalesce(nullif(l.accumulated_fill_quantity, 0), l.original_quantity) AS volume_usd,
       f.data_type AS source, name_mismatch(ts, f.period_start_ts, f.period_end_ts) AS mismatch, l.file_id,
       l.rowid AS src_rowid
FROM src_liquidation_snapshot l JOIN file_periods f USING (file_id)
UNION ALL
SELECT upper(trim(o.symbol)), parse_time(o."timestamp"),
       CASE upper(trim(o.side)) WHEN 'SELL' THEN 'long' WHEN 'BUY' THEN 'short' END,
       try_cast(o.avg_price AS DOUBLE), try_cast(o.filled_qty AS DOUBLE),
       coalesce(try_cast(o.usd_value AS DOUBLE), try_cast(o.avg_price AS DOUBLE) * try_cast(o.filled_qty AS DOUBLE)),
       'forceOrder', NULL, o.file_id, o.rowid
FROM src_force_orders o
UNION ALL
SELECT coalesce(upper(trim(a.symbol)), (SELECT CASE WHEN count(DISTINCT symbol) = 1 THEN min(symbol) END
                                        FROM src_files WHERE data_type IN ('klines', 'markPriceKlines'))),
       parse_time(a."time"), s.side, NULL, NULL,
       try_cast(CASE s.side WHEN 'long' THEN a.long_usd ELSE a.short_usd END AS DOUBLE), 'liquidationsAggregated',
       NULL, a.file_id, a.rowid
FROM src_liquidations_aggregated a CROSS JOIN (VALUES ('long'), ('short')) s(side);

CREATE OR REPLACE VIEW typed_realized_liquidations AS  -- every row, checked, with a hash for duplicates
SELECT *, (symbol IS NOT NULL OR source = 'liquidationsAggregated')   -- (its symbol may be decided by the build)
          AND ts IS NOT NULL AND mismatch IS NULL AND side IS NOT NULL AND volume_usd >= 0 AND isfinite(volume_usd)
          AND (price IS NULL AND source = 'liquidationsAggregated' OR price > 0 AND isfinite(price)) AS is_valid,
       hash(ts, side, price, quantity, volume_usd) AS row_hash
FROM realized_rows;

-- One row per event, for the symbols with market data: Binance's files repeat rows, forceOrder
-- recordings hold every symbol, and an aggregated period with nothing liquidated adds nothing.
CREATE OR REPLACE VIEW stg_realized_liquidations AS
SELECT * EXCLUDE (is_valid, mismatch, row_hash, src_rowid) FROM typed_realized_liquidations
WHERE is_valid AND volume_usd > 0 AND in_build_window(ts)
  AND symbol IN (SELECT symbol FROM src_files WHERE data_type NOT IN ('forceOrder', 'liquidationsAggregated'))
QUALIFY row_number() OVER (PARTITION BY symbol, ts, side, price, quantity, volume_usd, source ORDER BY file_id) = 1;

-- The gaps of forceOrder recordings: times nothing was recorded, which data_quality reports (a realized
-- volume of 0 there says nothing). A gap whose times cannot be read, or that ends before it starts, is invalid.
CREATE OR REPLACE VIEW typed_recording_gaps AS
SELECT '*' AS symbol, parse_time(g.from_ts) AS from_ts, parse_time(g.to_ts) AS to_ts, g.reason,
       parse_time(g.from_ts) <= parse_time(g.to_ts) AS is_valid, hash(g.from_ts, g.to_ts, g.reason) AS row_hash,
       g.file_id, g.rowid AS src_rowid
FROM src_recording_gaps g;

-- The period of each aggregated export, per symbol: the most common step between its consecutive times
-- (the shortest of equally common ones), e.g. 4 h for an export with one row per 4 hours. Its rows say
-- nothing finer: a backtest window must hold whole periods (sql/backtest/windows.sql leaves out a
-- horizon that does not, and build.py refuses a --horizons that does not before anything is staged,
-- from this view over the files themselves). Binance's liquidationSnapshot files and forceOrder
-- recordings hold single events: they have no period. symbol is NULL where the export has no symbol
-- column and the build several symbols.
CREATE OR REPLACE VIEW liquidation_periods AS
WITH steps AS (
    SELECT file_id, symbol, epoch(ts - lag(ts) OVER (PARTITION BY file_id, symbol ORDER BY ts))::BIGINT AS step_s
    FROM (SELECT DISTINCT file_id, symbol, ts FROM typed_realized_liquidations
          WHERE source = 'liquidationsAggregated' AND ts IS NOT NULL)
)
SELECT file_id, symbol, step_s AS period_s, n AS steps_of_period, total AS steps
FROM (SELECT file_id, symbol, step_s, count(*) AS n, sum(count(*)) OVER (PARTITION BY file_id, symbol) AS total
      FROM steps WHERE step_s > 0 GROUP BY file_id, symbol, step_s)
QUALIFY row_number() OVER (PARTITION BY file_id, symbol ORDER BY n DESC, step_s) = 1;

-- Every typed row in one shape, for the checks that are the same for every file type: invalid
-- values and repeated keys (within a file while staging it, across files in a build). order_key is the
-- key as a number that rises row by row through a file written in order, as Binance writes them
-- (NULL where the key is not one number: realized liquidations).
CREATE OR REPLACE VIEW dq_rows AS
SELECT symbol, 'metrics' AS data_type, '' AS kline_interval, ts, hash(ts) AS row_key, epoch_ms(ts) AS order_key,
       row_hash, is_valid, mismatch, found, overlapping, file_id, src_rowid
FROM typed_open_interest
UNION ALL SELECT symbol, 'fundingRate', '', ts, hash(ts), epoch_ms(ts), row_hash, is_valid, mismatch, found, overlapping,
                 file_id, src_rowid
FROM typed_funding_rates
UNION ALL SELECT symbol, data_type, coalesce(kline_interval, ''), ts, hash(ts), epoch_ms(ts), row_hash, is_valid,
                 mismatch, found, overlapping, file_id, src_rowid
FROM typed_klines
UNION ALL SELECT symbol, data_type, '', ts, hash(trade_id), trade_id, row_hash, is_valid, mismatch, found, overlapping,
                 file_id, src_rowid
FROM typed_trades
UNION ALL SELECT r.symbol, r.source, '', r.ts, hash(r.ts, r.side, r.price, r.quantity), NULL::BIGINT, r.row_hash,
                 r.is_valid, r.mismatch, NULL, f.overlapping, r.file_id, r.src_rowid
FROM typed_realized_liquidations r JOIN src_files f USING (file_id)
UNION ALL SELECT g.symbol, 'recordingGaps', '', g.from_ts, g.row_hash, NULL::BIGINT, g.row_hash, g.is_valid, NULL, NULL,
                 f.overlapping, g.file_id, g.src_rowid
FROM typed_recording_gaps g JOIN src_files f USING (file_id);

-- What each symbol's models read, where the files offer a choice: the kline intervals used, whether
-- mark-price bars exist (then they trigger liquidations), and aggTrades or trades. A choice holds for a
-- symbol's whole history, so an incremental build whose choices differ from the previous build's
-- recomputes everything (build.py).
CREATE OR REPLACE VIEW source_choices AS
SELECT coalesce(string_agg(choice, '; ' ORDER BY choice), '') AS choices FROM (
    SELECT symbol || ' ' || data_type || ' ' || kline_interval AS choice FROM stg_kline_intervals_used
    UNION ALL
    SELECT symbol || ' ' || min(data_type) FROM src_files
    WHERE data_type IN ('aggTrades', 'trades') AND status = 'loaded' GROUP BY symbol
    UNION ALL   -- whether every realized liquidation has a price (the fit then compares cells of the price axis)
    SELECT symbol || ' realized liquidations ' || CASE WHEN bool_and(price IS NOT NULL) THEN 'with' ELSE 'without' END
           || ' prices' FROM stg_realized_liquidations GROUP BY symbol
    UNION ALL   -- and the period of aggregated exports (which backtest horizons can be scored)
    SELECT symbol || ' realized liquidations every ' || duration_text(max(period_s)) FROM liquidation_periods
    WHERE symbol IN (SELECT symbol FROM stg_realized_liquidations) GROUP BY symbol);

-- Sources layer: helper macros shared by every layer.

-- Binance writes epoch times in milliseconds (USD-M futures) but spot switched to microseconds on
-- 2025-01-01. A 13-digit value is ms, a 16-digit value is µs: tell them apart by size
-- (1e14 ms is the year 5138, 1e14 µs is 1973) and return a naive UTC TIMESTAMP.
CREATE OR REPLACE MACRO ts_from_epoch(t) AS
    CASE WHEN t >= 100000000000000 THEN make_timestamp(t::BIGINT)
         ELSE make_timestamp(t::BIGINT * 1000) END;

-- Binance kline interval names ('1m', '5m', '1h', '1d', '1w', '1M') as seconds.
CREATE OR REPLACE MACRO interval_seconds(i) AS
    CAST(regexp_extract(i, '^(\d+)', 1) AS BIGINT) * CASE regexp_extract(i, '([smhdwM])$', 1)
        WHEN 's' THEN 1 WHEN 'm' THEN 60 WHEN 'h' THEN 3600 WHEN 'd' THEN 86400
        WHEN 'w' THEN 604800 WHEN 'M' THEN 2592000 END;

-- ISO-8601 UTC text, the only time format written to SQLite.
CREATE OR REPLACE MACRO iso_utc(ts) AS strftime(ts, '%Y-%m-%dT%H:%M:%SZ');

-- A time written as epoch ms/µs digits or as ISO-8601 text ('2025-10-22T09:36:42.306000'), as in
-- realized-liquidation exports; NULL when it is neither. A UTC offset ('+08:00', '-0530', 'Z') is
-- honoured: '2024-09-01T10:00:00+08:00' is 02:00 UTC (a plain cast to TIMESTAMP drops the offset and
-- would shift the row by 8 hours). Text without an offset is taken as UTC, whatever the session's zone.
CREATE OR REPLACE MACRO parse_time(t) AS
    CASE WHEN regexp_full_match(trim(t), '\d{12,17}') THEN ts_from_epoch(trim(t)::BIGINT)
         WHEN regexp_matches(trim(t), '(Z|[+-]\d\d(:?\d\d)?)$') AND regexp_matches(trim(t), '\d[T ]\d')
             THEN timezone('UTC', try_cast(trim(t) AS TIMESTAMPTZ))
         ELSE try_cast(trim(t) AS TIMESTAMP) END;

-- Seconds as a short duration: 300 -> '5 min', 3600 -> '1 h', 86400 -> '1 d'.
CREATE OR REPLACE MACRO duration_text(s) AS
    CASE WHEN s % 86400 = 0 THEN (s // 86400) || ' d' WHEN s % 3600 = 0 THEN (s // 3600) || ' h'
         WHEN s % 60 = 0 THEN (s // 60) || ' min' ELSE s || ' s' END;

-- Incremental builds. A build recomputes the rows of its persisted tables (`CREATE TABLE IF NOT EXISTS`)
-- from this time on and keeps the previous build's rows before it: the first day that a new, changed or
-- removed file holds (build.py, rebuild_from), '-infinity' for a full build. This is exact because every
-- model is causal: what it says at time t reads nothing after t (the backtest's forecasts rely on it too).
CREATE OR REPLACE MACRO rebuild_from() AS coalesce(getvariable('rebuild_from'), '-infinity'::TIMESTAMP);

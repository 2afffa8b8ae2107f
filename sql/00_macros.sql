-- Layer 0: helper macros shared by every layer.

-- Binance writes epoch times in milliseconds (USD-M futures) but spot switched to microseconds on
-- 2025-01-01 (domain.md §3). A 13-digit value is ms, a 16-digit value is µs: tell them apart by size
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

-- Backtest layer: what the backtest and the walk-forward fit are scored on. Realized liquidations; the
-- forecast windows (t, t + h] per horizon, with what the price path did in each; the price buckets the
-- path crossed; and the realized volume per window. The fit (sql/calibration/) and the
-- backtest (sql/backtest/baselines.sql) both read these, so both see the same windows.

-- Realized liquidations, one row per event (or per period and side for aggregated exports).
CREATE OR REPLACE TABLE realized_liquidations AS
SELECT symbol, ts, side, price, volume_usd, source FROM stg_realized_liquidations ORDER BY symbol, ts;

-- The windows of one horizon tile time: each starts on time_bucket's grid of that horizon. So the window
-- that holds a time is found by arithmetic, and joins to it are equalities: a join on origin <= t < end
-- compares every row with every window of its symbol: rows times windows, both growing with the days.
CREATE OR REPLACE MACRO window_origin(horizon_s, ts) AS time_bucket(to_seconds(horizon_s), ts);
-- A level consumed at t counts in the window (origin, origin + h] that holds t: what the levels frozen at
-- the origin forecast. A consumption at the origin itself belongs to the window before.
CREATE OR REPLACE MACRO consumption_window_origin(horizon_s, ts) AS window_origin(horizon_s, ts - INTERVAL 1 MICROSECOND);

-- Binance's interval name of a number of seconds: 14400 -> '4h', 86400 -> '1d' (as --horizons are written).
CREATE OR REPLACE MACRO interval_name(s) AS
    CASE WHEN s % 86400 = 0 THEN (s // 86400) || 'd' WHEN s % 3600 = 0 THEN (s // 3600) || 'h'
         WHEN s % 60 = 0 THEN (s // 60) || 'm' ELSE s || 's' END;

-- What a forecast window of each symbol with realized liquidations must hold whole: its trigger bars (a
-- 4-hour bar says nothing of the hours inside it: no 1-hour window has a path of its own) and the period
-- of its aggregated exports (an export with one row per 4 hours cannot say which hour liquidated: scored
-- at 1 h, three windows in four would hold nothing and the fourth four hours). A horizon is scored only
-- where it is a whole number of both; the heatmap's time grid stays at time_bucket_s (a coarser bar
-- shows the same levels in each of its time buckets until its end).
CREATE OR REPLACE TABLE backtest_periods AS
WITH symbols AS (SELECT symbol, min(ts) AS first_ts, max(ts) AS last_ts FROM realized_liquidations GROUP BY symbol),
bars AS (           -- the bars trigger_bars reads: mark price where present, else trade price
    SELECT symbol, data_type AS bar_type, kline_interval AS bar_interval, interval_s AS bar_s
    FROM stg_kline_intervals_used
    WHERE data_type = 'markPriceKlines'
       OR data_type = 'klines' AND symbol NOT IN (SELECT symbol FROM stg_kline_intervals_used WHERE data_type = 'markPriceKlines')
),
exports AS (        -- the coarsest period of the symbol's exports (sql/staging/staging.sql), and which file has it
    SELECT p.symbol, max(p.period_s) AS export_s, arg_max(f.path, p.period_s) AS export_file
    FROM liquidation_periods p JOIN src_files f USING (file_id) GROUP BY p.symbol
)
SELECT s.symbol, s.first_ts, s.last_ts, b.bar_type, b.bar_interval, b.bar_s, e.export_s, e.export_file,
       greatest(coalesce(b.bar_s, 1), coalesce(e.export_s, 1)) AS period_s
FROM symbols s LEFT JOIN bars b USING (symbol) LEFT JOIN exports e USING (symbol);

-- The horizons a symbol's data cannot score, and why.
CREATE OR REPLACE TABLE backtest_horizons_left_out AS
SELECT p.symbol, h.horizon, h.horizon_s, p.first_ts, p.last_ts,
       CASE WHEN h.horizon_s % coalesce(p.export_s, 1) <> 0 THEN 'liquidationsAggregated' ELSE p.bar_type END AS data_type,
       CASE WHEN h.horizon_s % coalesce(p.export_s, 1) = 0 THEN p.bar_interval END AS kline_interval,
       CASE WHEN h.horizon_s % coalesce(p.export_s, 1) <> 0 THEN p.export_file END AS file,
       CASE WHEN h.horizon_s % coalesce(p.export_s, 1) <> 0
            THEN CASE WHEN h.horizon_s < p.export_s THEN 'is finer than' ELSE 'is not a whole number of' END
                 || ' the ' || interval_name(p.export_s) || ' period of ' || regexp_extract(p.export_file, '[^/]*$')
            ELSE CASE WHEN h.horizon_s < p.bar_s THEN 'is finer than' ELSE 'is not a whole number of' END
                 || ' the ' || interval_name(p.bar_s) || ' bars of ' || p.symbol || ' (' || p.bar_type || ' ' || p.bar_interval || ')'
       END AS reason
FROM backtest_periods p CROSS JOIN backtest_horizons h
WHERE h.horizon_s % p.period_s <> 0;

-- Horizons given with --horizons are the user's choice: refuse one the data cannot score (build.py
-- checks the files' names and exports before staging; this catches what only staging shows). The
-- default horizons that no symbol can score are left out (the build's log and data_quality say so).
SELECT CASE WHEN getvariable('backtest_horizons_given') AND (SELECT count(*) FROM backtest_horizons_left_out) > 0
    THEN error((SELECT string_agg('--horizons ' || horizon || ' ' || reason, '; ' ORDER BY horizon_s, symbol)
                FROM backtest_horizons_left_out)
               || ': a window must hold whole periods; choose --horizons of whole periods') END;
DELETE FROM backtest_horizons h
WHERE EXISTS (SELECT 1 FROM backtest_periods) AND NOT EXISTS (SELECT 1 FROM backtest_periods p WHERE h.horizon_s % p.period_s = 0);

-- Trigger bars per whole time bucket: the price path at the grid's resolution.
CREATE OR REPLACE TABLE trigger_buckets AS
SELECT symbol, time_bucket(to_seconds(param('time_bucket_s')::BIGINT), ts) AS ts,
       min(low) AS low, max(high) AS high, arg_max(close, ts) AS close, max(end_ts) AS end_ts
FROM trigger_bars GROUP BY ALL;

-- Every forecast window (t, t + h] whose path the trigger bars hold, from the first day of realized
-- liquidations on, with the price at t (the last trigger close), what the path did in the window (its
-- lowest low, highest high), the range of the 24 hours before t (for breakout) and open interest at t.
-- realized_known: the realized liquidations cover the window (to the end of their last day). A window
-- past them is still forecast (what the data says now, before its liquidations are known) but never
-- scored, nor trained on: nothing was realized there is not the same as nothing is known. The first
-- backtest_warmup_s of the realized data are not scored: the models start with no positions, and
-- what is fitted walk-forward needs some history. They are still history for the later windows.
CREATE OR REPLACE TABLE backtest_windows AS
WITH coverage AS (  -- from the first day of realized data to its end: an aggregated export's last period's end
                    -- (its last row may be mid-day), the end of the last day of files of events
    SELECT r.symbol, time_bucket(INTERVAL 1 DAY, min(r.ts)) AS first_day,
           max(CASE WHEN r.source = 'liquidationsAggregated' AND p.export_s IS NOT NULL
                    THEN r.ts + to_seconds(p.export_s::BIGINT)
                    ELSE time_bucket(INTERVAL 1 DAY, r.ts) + INTERVAL 1 DAY END) AS end_day
    FROM realized_liquidations r LEFT JOIN backtest_periods p USING (symbol) GROUP BY r.symbol
),
origins AS (
    SELECT h.horizon, h.horizon_s, b.symbol, window_origin(h.horizon_s, b.ts) AS origin_ts,
           min(b.low) AS path_low, max(b.high) AS path_high, max(b.end_ts) AS last_end_ts
    FROM trigger_buckets b CROSS JOIN backtest_horizons h GROUP BY ALL
),
prior AS (          -- the range of the 24 hours before each time bucket's end, and its last close (a bar
                    -- longer than a time bucket ends after it: the price at its end is its close)
    SELECT symbol, greatest(ts + to_seconds(param('time_bucket_s')::BIGINT), end_ts) AS origin_ts, close AS price,
           min(low) OVER w AS prior_low, max(high) OVER w AS prior_high
    FROM trigger_buckets
    WINDOW w AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL 24 HOURS - to_seconds(param('time_bucket_s')::BIGINT)
                 PRECEDING AND CURRENT ROW)
)
SELECT o.symbol, o.horizon, o.horizon_s, o.origin_ts, o.origin_ts + to_seconds(o.horizon_s) AS end_ts,
       o.origin_ts + to_seconds(o.horizon_s) <= c.end_day AS realized_known,
       o.origin_ts >= c.first_day + to_seconds(param('backtest_warmup_s')::BIGINT)
           AND o.origin_ts + to_seconds(o.horizon_s) <= c.end_day AS scored,
       p.price, floor(p.price / param('price_bucket_usd'))::BIGINT AS price_bucket_index,
       least(o.path_low, p.price) AS path_low, greatest(o.path_high, p.price) AS path_high,
       p.prior_low, p.prior_high, oi.open_interest_usd
FROM origins o
JOIN coverage c ON c.symbol = o.symbol AND o.origin_ts >= c.first_day
JOIN prior p ON p.symbol = o.symbol AND p.origin_ts = o.origin_ts
JOIN backtest_periods pp ON pp.symbol = o.symbol AND o.horizon_s % pp.period_s = 0  -- whole bars and periods
ASOF JOIN stg_open_interest oi ON oi.symbol = o.symbol AND o.origin_ts >= oi.ts
WHERE o.last_end_ts = o.origin_ts + to_seconds(o.horizon_s);   -- whole windows only

-- Every horizon a symbol with realized liquidations has no scored window of, and why: left out above, or
-- no whole window after the warm-up where bars and realized liquidations meet. data_quality reports
-- each (horizon_not_scored), and build.py's log: never an empty backtest without a word.
CREATE OR REPLACE TABLE backtest_not_scored AS
SELECT symbol, horizon, horizon_s, data_type, kline_interval, file, first_ts, last_ts,
       format('backtest horizon {} {}: not scored for {}{}', horizon, reason, symbol,
              CASE WHEN horizon IN (SELECT horizon FROM backtest_horizons)
                   THEN ' (scored for other symbols)'
                   ELSE ' (left out; scored: '
                        || coalesce((SELECT string_agg(horizon, ', ' ORDER BY horizon_s) FROM backtest_horizons), 'none')
                        || ')' END) AS detail
FROM backtest_horizons_left_out
UNION ALL
SELECT p.symbol, h.horizon, h.horizon_s, (SELECT min(source) FROM realized_liquidations r WHERE r.symbol = p.symbol),
       NULL, NULL, p.first_ts, p.last_ts,
       format('backtest horizon {}: no whole window to score for {}: realized liquidations {} .. {}, trigger bars {} .. {}; '
              || 'the first {} of realized data are history only (backtest_warmup_s)', h.horizon, p.symbol,
              p.first_ts, p.last_ts, (SELECT min(ts) FROM trigger_bars b WHERE b.symbol = p.symbol),
              (SELECT max(end_ts) FROM trigger_bars b WHERE b.symbol = p.symbol),
              duration_text(param('backtest_warmup_s')::BIGINT))
FROM backtest_periods p CROSS JOIN backtest_horizons h
WHERE h.horizon_s % p.period_s = 0
  AND NOT EXISTS (SELECT 1 FROM backtest_windows w WHERE w.symbol = p.symbol AND w.horizon = h.horizon AND w.scored);

-- The price buckets each window's path crossed on each side (longs: from the price at t down to the
-- lowest low; shorts: up to the highest high), with the crossed share of each bucket and its distance
-- from the price's bucket at t, in buckets; and the open interest times the share of price crossed in
-- it (move_exposure_usd: what the naive_move baseline predicts, and the ensemble's unmodelled part).
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
       (least(range_high, (bucket_index + 1) * usd) - greatest(range_low, bucket_index * usd)) / usd AS crossed_share,
       open_interest_usd / price * (least(range_high, (bucket_index + 1) * usd) - greatest(range_low, bucket_index * usd))
           AS move_exposure_usd
FROM buckets WHERE least(range_high, (bucket_index + 1) * usd) > greatest(range_low, bucket_index * usd);

-- Realized volume per window and side, and per price bucket where the events carry prices.
CREATE OR REPLACE TABLE backtest_realized AS
WITH held AS (      -- each event in the window of each horizon that holds it (origin <= ts < end)
    SELECT r.*, h.horizon, window_origin(h.horizon_s, r.ts) AS origin_ts
    FROM realized_liquidations r CROSS JOIN backtest_horizons h
)
SELECT r.symbol, r.horizon, r.origin_ts, r.side, floor(r.price / param('price_bucket_usd'))::BIGINT AS bucket_index,
       sum(r.volume_usd) AS volume_usd
FROM held r JOIN backtest_windows w USING (symbol, horizon, origin_ts)
GROUP BY ALL;

-- Distances in buckets, pooled in bins that double in width (0, 1, 2-3, 4-7, 8-15 ...): a few weeks
-- of liquidations are too few to learn every single distance, and near the price a bucket matters more.
CREATE OR REPLACE MACRO distance_bin(d) AS floor(log2(d + 1))::INTEGER;

-- Layer 3c: what every model reads. Open-interest steps with their entry price and long/short
-- split, the open-interest scale that shrinks alive positions, and the price buckets each bar
-- traded through (what consumes levels).

-- Each 5-minute open-interest row against the previous one. A rise is new positions opened during
-- (previous_ts, ts] at that interval's price; a fall closes positions.
CREATE OR REPLACE TABLE oi_steps AS
WITH oi AS (
    SELECT symbol, ts, open_interest, open_interest_usd, long_short_account_ratio,
           lag(ts) OVER w AS previous_ts, lag(open_interest) OVER w AS previous_open_interest
    FROM stg_open_interest WINDOW w AS (PARTITION BY symbol ORDER BY ts)
),
bars_in_step AS (   -- every trade-price bar belongs to the first open-interest row after its open
    SELECT o.symbol, o.ts, sum(k.quote_volume_usd) / nullif(sum(k.volume), 0) AS vwap, avg(k.close) AS mean_close
    FROM stg_price_klines k ASOF JOIN oi o ON k.symbol = o.symbol AND k.ts < o.ts
    WHERE k.ts >= o.previous_ts
    GROUP BY ALL
),
priced AS (
    SELECT o.*, coalesce(b.vwap, b.mean_close) AS step_price
    FROM oi o LEFT JOIN bars_in_step b USING (symbol, ts)
),
last_close AS (     -- coarser bars than the open-interest cadence: the last bar opened before
    SELECT p.symbol, p.ts, k.close
    FROM priced p ASOF JOIN stg_price_klines k ON p.symbol = k.symbol AND p.ts > k.ts
),
funding AS (
    SELECT p.symbol, p.ts, f.funding_rate
    FROM priced p ASOF JOIN stg_funding_rates f ON p.symbol = f.symbol AND p.ts >= f.ts
)
SELECT p.symbol, p.ts, p.previous_ts, p.open_interest, p.previous_open_interest,
       coalesce(p.step_price, c.close) AS entry_price,
       (p.open_interest - p.previous_open_interest) * coalesce(p.step_price, c.close) AS delta_usd,
       -- Below the noise threshold a change opens or closes nothing: max(25k USD, 0.002 % of OI).
       greatest(param('oi_noise_threshold_usd'), param('oi_noise_threshold_share') * p.open_interest_usd)
           AS noise_threshold_usd,
       -- Account long/short ratio r = longs / shorts -> long share r / (1 + r); 50/50 without it.
       coalesce(p.long_short_account_ratio / (1 + p.long_short_account_ratio), 0.5) AS account_long_share,
       f.funding_rate
FROM priced p
LEFT JOIN last_close c USING (symbol, ts)
LEFT JOIN funding f USING (symbol, ts)
WHERE p.previous_ts IS NOT NULL AND coalesce(p.step_price, c.close) IS NOT NULL;

-- When open interest falls, every alive position shrinks in proportion: scale(t) is the product of
-- open_interest / previous_open_interest over the falls up to t, kept as a log for a running sum.
-- A position opened at t1 with volume v is worth v * scale(t) / scale(t1) at t (if not consumed).
CREATE OR REPLACE TABLE oi_scale AS
SELECT symbol, ts, sum(CASE WHEN delta_usd < -noise_threshold_usd THEN ln(open_interest / previous_open_interest)
                            ELSE 0 END) OVER (PARTITION BY symbol ORDER BY ts) AS log_scale
FROM oi_steps;

-- The price buckets each trigger bar traded through. Binance liquidates on the mark price, so mark
-- price bars are used where present, trade-price bars otherwise. Each bar's range is widened to the
-- previous close, so a jump between bars (or a hole in the data) still crosses every bucket between.
CREATE OR REPLACE TABLE bucket_touches AS
WITH bars AS (
    SELECT symbol, ts, interval_s, high, low, close FROM stg_mark_price_klines
    UNION ALL
    SELECT symbol, ts, interval_s, high, low, close FROM stg_price_klines p
    WHERE p.symbol NOT IN (SELECT symbol FROM stg_mark_price_klines)
),
ranged AS (
    SELECT symbol, ts, ts + to_seconds(interval_s) AS end_ts,
           least(low, coalesce(lag(close) OVER w, low)) AS low, greatest(high, coalesce(lag(close) OVER w, high)) AS high
    FROM bars WINDOW w AS (PARTITION BY symbol ORDER BY ts)
)
SELECT symbol, unnest(generate_series(floor(low / param('price_bucket_usd'))::BIGINT,
                                      floor(high / param('price_bucket_usd'))::BIGINT)) AS bucket_index,
       ts, end_ts
FROM ranged;

-- The heatmap's time grid per symbol: the ends of whole time buckets covered by trigger bars,
-- with the open-interest scale in force at each.
CREATE OR REPLACE TABLE time_grid AS
WITH span AS (
    SELECT symbol, time_bucket(to_seconds(param('time_bucket_s')::BIGINT), min(ts)) AS first_start,
           max(end_ts) AS last_end
    FROM bucket_touches GROUP BY symbol
),
grid AS (
    SELECT symbol, unnest(generate_series(first_start + to_seconds(param('time_bucket_s')::BIGINT), last_end,
                                          to_seconds(param('time_bucket_s')::BIGINT))) AS end_ts
    FROM span
)
SELECT g.symbol, g.end_ts, g.end_ts - to_seconds(param('time_bucket_s')::BIGINT) AS start_ts,
       coalesce(s.log_scale, 0) AS log_scale
FROM grid g ASOF LEFT JOIN oi_scale s ON g.symbol = s.symbol AND g.end_ts >= s.ts;

-- Models layer: what every model reads. Open-interest steps with their entry price, the volume they open
-- (a rise, plus the churn that reopens what fades) and the signals of which side is levered; the
-- positions opened before the data (the warm start); the open-interest falls that shrink alive levels;
-- and the trigger bars with a sparse table of their extremes (what consumes levels).

-- Each 5-minute open-interest row against the previous one. A rise is new positions opened during
-- (previous_ts, ts], priced with what was known at ts and nothing later: the VWAP of the trade-price
-- bars that opened in the step and had closed by ts, or, when bars are coarser than the step (1-hour
-- klines against 5-minute open interest), the close of the last bar that had closed by ts. (Taking
-- the bar that merely *opened* before ts would price the 10:05 step with the whole 10:00-11:00 hour.)
-- DuckDB plans small-looking ASOF joins as nested loops, and estimates the inputs below at 0 rows:
-- a nested loop compares every row with every row (same results). Always use the ASOF operator.
SET asof_loop_join_threshold = 0;
CREATE OR REPLACE TABLE oi_steps AS
WITH oi AS (
    SELECT symbol, ts, open_interest, open_interest_usd, long_short_account_ratio, top_trader_position_ratio,
           lag(ts) OVER w AS previous_ts, lag(open_interest) OVER w AS previous_open_interest
    FROM stg_open_interest WINDOW w AS (PARTITION BY symbol ORDER BY ts)
),
bars AS (SELECT *, ts + to_seconds(interval_s) AS end_ts FROM stg_price_klines),
bars_in_step AS (   -- every bar belongs to the first open-interest row at or after its close
    SELECT o.symbol, o.ts, sum(k.quote_volume_usd) / nullif(sum(k.volume), 0) AS vwap, avg(k.close) AS mean_close,
           sum(k.taker_buy_volume) / nullif(sum(k.volume), 0) AS taker_buy_share
    FROM bars k ASOF JOIN oi o ON k.symbol = o.symbol AND k.end_ts <= o.ts
    WHERE k.ts >= o.previous_ts
    GROUP BY ALL
),
priced AS (
    SELECT o.*, coalesce(b.vwap, b.mean_close) AS step_price, b.taker_buy_share
    FROM oi o LEFT JOIN bars_in_step b USING (symbol, ts)
),
last_close AS (     -- the last bar closed by the open-interest row's time
    SELECT p.symbol, p.ts, k.close, k.taker_buy_volume / nullif(k.volume, 0) AS taker_buy_share
    FROM priced p ASOF JOIN bars k ON p.symbol = k.symbol AND p.ts >= k.end_ts
),
funding AS (        -- the last funding rate published by then, and its interval
    SELECT p.symbol, p.ts, f.funding_rate, f.funding_interval_hours
    FROM priced p ASOF JOIN stg_funding_rates f ON p.symbol = f.symbol AND p.ts >= f.ts
)
-- what the open-interest models open in the step: the rise above noise, and the churn
SELECT *, greatest(delta_usd, 0) * (delta_usd > noise_threshold_usd)::INTEGER + churn_usd AS opened_usd FROM (
SELECT p.symbol, p.ts, p.previous_ts, p.open_interest, p.previous_open_interest,
       coalesce(p.step_price, c.close) AS entry_price,
       (p.open_interest - p.previous_open_interest) * coalesce(p.step_price, c.close) AS delta_usd,
       -- Below the noise threshold a change opens or closes nothing: max(25k USD, 0.002 % of OI).
       greatest(param('oi_noise_threshold_usd'), param('oi_noise_threshold_share') * p.open_interest_usd)
           AS noise_threshold_usd,
       -- Churn: positions close at a constant rate whatever open interest does (one trader closes, another
       -- opens; Binance's daily volume is several times its open interest). Alive levels fade at that rate
       -- (sql/lifecycle/positions.sql) and, open interest being what it is, as much is reopened at this step's
       -- price: previous open interest x (1 - 2^(-step / half-life)). One half-life for both: the
       -- lifecycle fades every model's levels, the ensemble's included, at fade_half_life_h (it is not
       -- fitted: sql/calibration/), so what is reopened is what faded.
       p.previous_open_interest * coalesce(p.step_price, c.close)
           * (1 - exp(-ln(2) * epoch(p.ts - p.previous_ts) / (3600 * param('fade_half_life_h')))) AS churn_usd,
       -- Account long/short ratio r = longs / shorts -> long share r / (1 + r); 50/50 without it.
       coalesce(p.long_short_account_ratio / (1 + p.long_short_account_ratio), 0.5) AS account_long_share,
       -- The top traders' position ratio, as a long share of their positions: the large accounts.
       coalesce(p.top_trader_position_ratio / (1 + p.top_trader_position_ratio), 0.5) AS top_trader_long_share,
       -- Who opened aggressively in the step: taker buys minus taker sells, as a share of the volume.
       2 * coalesce(p.taker_buy_share, c.taker_buy_share, 0.5) - 1 AS taker_imbalance,
       f.funding_rate,
       -- Binance funds every 8 h for most symbols but every 4 h or 1 h for others: the rate per 8 h
       -- makes them comparable with the neutral rate (0.01 % per 8 h). A missing interval is 8 h.
       f.funding_rate * 8 / coalesce(nullif(f.funding_interval_hours, 0), 8) AS funding_rate_8h
FROM priced p
LEFT JOIN last_close c USING (symbol, ts)
LEFT JOIN funding f USING (symbol, ts)
WHERE p.previous_ts IS NOT NULL AND coalesce(p.step_price, c.close) IS NOT NULL);

-- The warm start. Most open interest at any moment was opened before: at the first step, the open
-- interest already there is taken as positions opened at entry prices spread lognormally around the
-- first price (warm_start_share of it; prior_entry_spread). Without it the models start empty and a small
-- move crosses nothing. Positions whose liquidation price is already on the wrong side of the first price
-- cannot still be open: sql/models/pieces.sql drops them (survivorship), so the prior holds less than the
-- first open interest. Every model starts from the same prior.
-- The spread is drawn as the density it is, not as a few points: entries every 1/8 of a price bucket
-- (at the first price; 9 to 2000 of them) over +-3.5 standard deviations, each weighted by the normal
-- density at its z. Nine equal-mass quantiles drew, for days, 9 entries x 7 tiers x 2 sides of thin bright
-- lines with empty buckets between them (a "barcode" on the heatmap that looked like market structure).
-- A tier's liquidation prices are its entries times a constant, so 8 entries a bucket leave the
-- liquidation-price buckets within about one entry in 8 of each other: no bucket empty, no line.
CREATE OR REPLACE TABLE prior_openings AS
WITH first_step AS (
    SELECT *, least(2000, greatest(9, ceil(8 * 7 * param('prior_entry_spread') * entry_price
                                            / param('price_bucket_usd'))))::BIGINT AS entries
    FROM oi_steps QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY ts) = 1
),
spread AS (
    SELECT f.*, -3.5 + 7 * (i + 0.5) / f.entries AS z
    FROM first_step f CROSS JOIN LATERAL (SELECT unnest(range(f.entries)) AS i)
)
SELECT symbol, ts AS created_ts, entry_price * exp(param('prior_entry_spread') * z) AS entry_price,
       entry_price AS reference_price,
       param('warm_start_share') * previous_open_interest * entry_price
           * exp(-z * z / 2) / sum(exp(-z * z / 2)) OVER (PARTITION BY symbol) AS volume_usd
FROM spread
WHERE param('warm_start_share') > 0;

-- Open-interest falls: the share of open interest closed in each step, where the fall is more than
-- noise. Which part of it the models' alive levels lose depends on what they say was liquidated in
-- the same step (sql/lifecycle/positions.sql nets that out), so the scale itself is per model and side.
-- log_fall_scale is what every fall since the first step left of a level (the gross scale, before any
-- netting), elapsed_s the time since the first step: the lifecycle and the fit both value levels with them.
CREATE OR REPLACE TABLE oi_falls AS
SELECT *, sum(ln(1 - closed_share)) OVER w AS log_fall_scale, sum(epoch(ts - previous_ts)) OVER w AS elapsed_s
FROM (SELECT symbol, ts, previous_ts,
             CASE WHEN delta_usd < -noise_threshold_usd THEN 1 - open_interest / previous_open_interest ELSE 0 END
                 AS closed_share
      FROM oi_steps)
WINDOW w AS (PARTITION BY symbol ORDER BY ts);

-- The bars that trigger liquidations, numbered per symbol. Binance liquidates on the mark price, so
-- mark-price bars are used where present, trade-price bars otherwise. Each bar's range is widened to
-- the previous close, so a jump between bars (or a hole in the data) still crosses every price between.
CREATE OR REPLACE TABLE trigger_bars AS
WITH bars AS (
    SELECT symbol, ts, interval_s, high, low, close FROM stg_mark_price_klines
    UNION ALL
    SELECT symbol, ts, interval_s, high, low, close FROM stg_price_klines p
    WHERE p.symbol NOT IN (SELECT symbol FROM stg_mark_price_klines)
)
SELECT symbol, dense_rank() OVER (ORDER BY symbol) AS symbol_id,
       (row_number() OVER w - 1)::BIGINT AS bar_index, ts, ts + to_seconds(interval_s) AS end_ts, close,
       least(low, coalesce(lag(close) OVER w, low)) AS low, greatest(high, coalesce(lag(close) OVER w, high)) AS high
FROM bars WINDOW w AS (PARTITION BY symbol ORDER BY ts);

-- The lowest low and highest high of every run of 2^k trigger bars from each bar on (a sparse table,
-- k = 0 .. log2(bars)); a run that would pass the symbol's last bar stops there. With it the first bar
-- after a position opened that crosses its exact liquidation price is found in log2(bars) lookups
-- (sql/models/pieces.sql), instead of scanning bars. range_key packs (k, symbol, bar) into one integer so
-- each lookup is a single-column hash join; range_level, range_symbol and range_bar unpack it.
-- top_range_level is the largest k: runs of 2^k bars cover the longest symbol's bars.
CREATE OR REPLACE MACRO range_key(k, symbol_id, bar_index) AS
    (k::BIGINT << 48) + (symbol_id::BIGINT << 32) + bar_index::BIGINT;
CREATE OR REPLACE MACRO range_level(key) AS key >> 48;
CREATE OR REPLACE MACRO range_symbol(key) AS (key >> 32) & 65535;
CREATE OR REPLACE MACRO range_bar(key) AS key & 4294967295;
CREATE OR REPLACE MACRO top_range_level() AS
    (SELECT ceil(log2(greatest(2, max(bar_index) + 1)))::BIGINT FROM trigger_bars);
-- Persisted: a run that ends before the first bar from rebuild_from() on (per symbol; or after the last bar)
-- is kept, and the others are computed again.
CREATE TABLE IF NOT EXISTS trigger_ranges (range_key BIGINT, low DOUBLE, high DOUBLE);
CREATE OR REPLACE TABLE trigger_ranges_from AS
SELECT symbol_id, coalesce(min(bar_index) FILTER (ts >= rebuild_from()), max(bar_index) + 1) AS first_bar
FROM trigger_bars GROUP BY symbol_id;
DELETE FROM trigger_ranges t USING trigger_ranges_from f
WHERE range_symbol(t.range_key) = f.symbol_id
  AND range_bar(t.range_key) + (1::BIGINT << range_level(t.range_key)) - 1 >= f.first_bar;
-- The runs are built by doubling: the run of 2^(k+1) bars from bar i is the run of 2^k bars from i
-- followed by the run of 2^k bars from i + 2^k, so level k + 1 at i takes the lower low and the higher
-- high of level k at i and at i + 2^k: one hash join per level. (A sliding window of 2^k rows for each
-- level k would sort every bar again for each level, where a hash join needs no order.)
-- Where i + 2^k is past the last bar, the run from i stops at the last bar already, and the join finds
-- nothing: least and greatest skip the NULL, and level k + 1 at i is level k at i, as the run's end says.
-- A new row of level k + 1 (from first_bar - 2^(k+1) + 1 on) reads level k from the same bar on. Those
-- rows of level k are new from first_bar - 2^k + 1 on; the up to 2^k before them are runs this build
-- keeps, read from trigger_ranges_kept. They are copied out before the INSERT: a recursive step reading
-- trigger_ranges itself would also see the rows the INSERT has already written (DuckDB streams them in).
-- Every level holds each symbol's last bar (kept at level 0 when no bar is new), so the recursion, which
-- stops at the first empty level, runs up to top_range_level.
CREATE OR REPLACE TABLE trigger_ranges_kept AS
SELECT t.range_key, t.low, t.high
FROM trigger_ranges t JOIN trigger_ranges_from f ON range_symbol(t.range_key) = f.symbol_id
WHERE range_bar(t.range_key) >= f.first_bar - (1::BIGINT << (range_level(t.range_key) + 1)) + 1;
INSERT INTO trigger_ranges
WITH RECURSIVE levels(range_key, low, high, is_new) AS (
    -- level 0: the new bars, and the kept bar before them
    SELECT range_key(0, symbol_id, bar_index), low, high, true
    FROM trigger_bars JOIN trigger_ranges_from f USING (symbol_id)
    WHERE bar_index >= f.first_bar
    UNION ALL
    SELECT range_key, low, high, false FROM trigger_ranges_kept WHERE range_level(range_key) = 0
    UNION ALL (
        -- level k + 1 from level k: range_key + 2^k is the run 2^k bars on, range_key + 2^48 the next level
        SELECT a.range_key + (1::BIGINT << 48), least(a.low, b.low), greatest(a.high, b.high), true
        FROM levels a
        LEFT JOIN levels b ON b.range_key = a.range_key + (1::BIGINT << range_level(a.range_key))
        WHERE range_level(a.range_key) < top_range_level()
        UNION ALL
        -- and the kept rows of level k + 1 that level k + 2 reads
        SELECT range_key, low, high, false FROM trigger_ranges_kept
        WHERE range_level(range_key) = (SELECT any_value(range_level(range_key)) + 1 FROM levels)
    )
)
SELECT range_key, low, high FROM levels WHERE is_new;

-- The heatmap's time grid per symbol: the ends of whole time buckets covered by trigger bars.
CREATE OR REPLACE TABLE time_grid AS
WITH span AS (
    SELECT symbol, time_bucket(to_seconds(param('time_bucket_s')::BIGINT), min(ts)) AS first_start,
           max(end_ts) AS last_end
    FROM trigger_bars GROUP BY symbol
)
SELECT symbol, end_ts, end_ts - to_seconds(param('time_bucket_s')::BIGINT) AS start_ts
FROM (SELECT symbol, unnest(generate_series(first_start + to_seconds(param('time_bucket_s')::BIGINT), last_end,
                                            to_seconds(param('time_bucket_s')::BIGINT))) AS end_ts FROM span);
-- The build runs in one transaction (build.py), and DuckDB counts no distinct values of a table created
-- in it: it takes sql/outputs/model_outputs.sql's joins with the grid on symbol for cross products (and
-- plans the heatmap's window, and sets out its buffers, for a cross product's rows).
ANALYZE time_grid;

-- Model trade_flow, in the manner of py-liquidation-map (aoki-h-jp).
-- Assumes: a large taker trade opens a position on the taker's side (taker buy = long opened,
-- taker sell = short opened) at the trade price, and, every contract having two sides, as much on the
-- maker's side: the taker is the levered side (signal +1 for a taker buy, -1 for a sell), the maker the
-- less levered (side_leverage_tilt). py-liquidation-map opens the taker's side only.
-- The large trades of one side in one trade_flow_bucket_s (5 minutes, open interest's cadence) are one
-- opening at their VWAP, timed at the last of them: price moves about 0.1 % in 5 minutes, under a price
-- bucket, and real days hold tens of thousands of large trades. Its three filters, per side and time bucket:
-- trade value >= trade_flow_min_notional_usd ("gross_value"), only the trade_flow_top_n largest
-- ("top_n", 0 = off), only the top trade_flow_portion share of trades by value ("portion", 0 = off).
-- Unlike py-liquidation-map, each trade's value is spread over the leverage tiers by weight (it
-- adds the whole amount to every leverage: counted four times), uses the exact liquidation price
-- instead of fixed offsets, and its levels are consumed and shrink like every other model's.
-- aggTrades are used where a symbol has them, individual trades otherwise.
-- A table, not a view: it reads every trade (millions a day), so it is computed once, and kept from
-- one build to the next: a build reads only the trade files that hold rows from rebuild_from() on
-- (a filter on their src_files range, which skips the other files' Parquet whole).
SET VARIABLE trade_flow_portion = (SELECT param('trade_flow_portion'));
CREATE TABLE IF NOT EXISTS openings_trade_flow (
    model VARCHAR, symbol VARCHAR, created_ts TIMESTAMP, entry_price DOUBLE, reference_price DOUBLE, volume_usd DOUBLE,
    signal DOUBLE);
DELETE FROM openings_trade_flow WHERE created_ts >= rebuild_from();
INSERT INTO openings_trade_flow
WITH source AS (    -- 'aggTrades' < 'trades'
    SELECT symbol, min(data_type) AS data_type FROM src_files
    WHERE data_type IN ('aggTrades', 'trades') AND status = 'loaded' GROUP BY symbol
),
large AS (          -- stg_trades' rules (valid, in the window, one row per trade id), on the large trades only
    SELECT t.* EXCLUDE (is_valid, row_hash, src_rowid),
           time_bucket(to_seconds(param('time_bucket_s')::BIGINT), t.ts) AS time_bucket_start
    FROM typed_trades t JOIN source USING (symbol, data_type)
    WHERE t.notional_usd >= param('trade_flow_min_notional_usd') AND t.is_valid AND in_build_window(t.ts)
      AND t.file_last_ts >= rebuild_from() AND t.ts >= rebuild_from()
    QUALIFY row_number() OVER (PARTITION BY t.symbol, t.data_type, t.trade_id ORDER BY t.file_id) = 1
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY symbol, taker_side, time_bucket_start ORDER BY notional_usd DESC, ts)
              AS size_rank
    FROM large
),
counts AS (  -- all trades per side and time bucket, for the "portion" filter; only when it is on: the
             -- variable is a constant when the query is planned, so with portion 0 not one trade is read
    SELECT t.symbol, t.taker_side, time_bucket(to_seconds(param('time_bucket_s')::BIGINT), t.ts) AS time_bucket_start,
           count(*) AS trades
    FROM stg_trades t JOIN source USING (symbol, data_type)
    WHERE getvariable('trade_flow_portion') > 0 AND t.file_last_ts >= rebuild_from() AND t.ts >= rebuild_from()
    GROUP BY ALL
)
SELECT 'trade_flow' AS model, r.symbol, max(r.ts) AS created_ts,
       sum(r.notional_usd) / sum(r.notional_usd / r.price) AS entry_price, entry_price AS reference_price,
       sum(r.notional_usd) AS volume_usd, CASE r.taker_side WHEN 'buy' THEN 1.0 ELSE -1.0 END AS signal
FROM ranked r LEFT JOIN counts c USING (symbol, taker_side, time_bucket_start)
WHERE (param('trade_flow_top_n') <= 0 OR r.size_rank <= param('trade_flow_top_n'))
  -- the large trades are the head of the ranking of all trades, so a rank among them is a rank among all
  AND (param('trade_flow_portion') <= 0 OR r.size_rank <= ceil(param('trade_flow_portion') * c.trades))
GROUP BY r.symbol, r.taker_side, time_bucket(to_seconds(param('trade_flow_bucket_s')::BIGINT), r.ts)
UNION ALL   -- the warm start (sql/models/inputs.sql); trades then churn the book, and levels fade
SELECT 'trade_flow', symbol, created_ts, entry_price, reference_price, volume_usd, 0 FROM prior_openings
WHERE symbol IN (SELECT symbol FROM source) AND created_ts >= rebuild_from();   -- no trades, no trade_flow

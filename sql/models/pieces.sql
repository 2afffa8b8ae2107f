-- Models layer: positions from openings, shared by every model. Each opening opens its volume on both
-- sides (every contract has a long and a short) and spreads each side over the leverage tiers. The
-- sides differ in leverage only: the side the model's signal s (-1 .. 1) says is levered gets the tier
-- weights w(L) x L^(tilt x s), the other side w(L) x L^(-tilt x s), each renormalised to the opening's
-- volume, so the volume on each side is conserved. stop_loss_share of every piece is closed before
-- price reaches its liquidation price (stop-losses, closes by hand): only the rest is a level.
-- Each piece gets its exact liquidation price; then its first crossing by the trigger path.
--
-- Stops fail in fast markets. A stop is an order that waits at a price between entry and liquidation
-- (stop_distance_share of the way); when one bar takes price from before the stop to beyond the
-- liquidation price, the stop had no time to fill ahead of the liquidation engine, and the whole
-- position is liquidated. This is why liquidations come in bursts in fast moves and few in slow
-- drifts over the same levels. Such a crossing is `blown_through`, and it liquidates the level whole:
-- what stop_loss_share took off it comes back (blow_through_factor). The bar is the finest the data
-- has (1-minute klines where present), so with coarser bars more crossings count as fast.
CREATE OR REPLACE MACRO blow_through_factor(blown_through, stop_share) AS
    CASE WHEN blown_through THEN 1 / (1 - stop_share) ELSE 1 END;

-- Persisted: a build opens the pieces of the openings from rebuild_from() on and keeps the earlier ones
-- (the ensemble's too: sql/models/ensemble.sql adds its pieces to this table).
CREATE TABLE IF NOT EXISTS pieces (
    model VARCHAR, symbol VARCHAR, created_ts TIMESTAMP, side VARCHAR, leverage INTEGER, entry_price DOUBLE,
    liquidation_price DOUBLE, volume_usd DOUBLE, side_role VARCHAR);
DELETE FROM pieces WHERE created_ts >= rebuild_from();
INSERT INTO pieces BY NAME
WITH openings AS (
    SELECT row_number() OVER () AS opening_id, * FROM (
        SELECT * FROM openings_binance_standard
        UNION ALL SELECT * FROM openings_funding_adjusted
        UNION ALL SELECT * FROM openings_trade_flow
        UNION ALL SELECT * FROM openings_churn_only)
    WHERE volume_usd > 0 AND created_ts >= rebuild_from()
),
tiered AS (
    SELECT o.*, s.side, s.sign, t.leverage,
           t.weight * power(t.leverage, param('side_leverage_tilt') * s.sign * o.signal) AS tier_weight,
           -- a tier's bracket comes from its typical position's notional, not from open interest
           liquidation_price_in_bracket(s.side, o.entry_price, t.leverage, t.typical_notional_usd,
                                        t.maintenance_margin_rate, t.maintenance_amount_usd) AS liquidation_price
    FROM openings o
    CROSS JOIN (VALUES ('long', 1), ('short', -1)) s(side, sign)
    JOIN tier_brackets t USING (symbol)
),
shared AS (
    SELECT *, volume_usd * (1 - param('stop_loss_share')) * tier_weight
              / sum(tier_weight) OVER (PARTITION BY opening_id, side) AS piece_usd
    FROM tiered
)
SELECT model, symbol, created_ts, side, leverage, entry_price, liquidation_price, piece_usd AS volume_usd,
       -- which side the signal called levered: the walk-forward fit scales the two roles apart
       CASE WHEN sign * signal > 0 THEN 'levered' ELSE 'other' END AS side_role
FROM shared
-- positions of the warm start whose liquidation price is past the first price were liquidated already
WHERE piece_usd > 0 AND CASE side WHEN 'long' THEN liquidation_price < reference_price
                                  ELSE liquidation_price > reference_price END;

-- When each liquidation price is first crossed: a long at LP by the first trigger bar at or after it
-- opened whose low is at or below LP, a short by the first whose high is at or above LP. Binary descent
-- over the sparse table of bar extremes (sql/models/inputs.sql, trigger_ranges): from the largest run
-- of bars down to one bar, skip a run whenever it stays entirely on the safe side of LP. What is left
-- is the first crossing bar, exactly (a position past the last bar was never crossed). Pieces of
-- different models that share (symbol, side, open time, LP) share the answer, so it is asked once;
-- the ensemble's pieces (sql/models/ensemble.sql) are the components' pieces reweighted, so their
-- crossings are among these.
--
-- Persisted: a crossing found at a bar that opened before rebuild_from() is kept (the bars before it are
-- the previous build's), and so is a level never crossed that the bars from rebuild_from() on do not reach;
-- every other piece's crossing is looked for again (recrossed: what sql/lifecycle/positions.sql revalues). No
-- bar before rebuild_from() crosses a recrossed piece (it was crossed later, or not at all, by the same
-- bars in the previous build), so its descent starts at the first bar from rebuild_from() on
-- (trigger_ranges_from) and reads only the runs from there: each of its steps hashes those runs, not
-- the whole sparse table, which grows with all the history, not with the days added.
CREATE TABLE IF NOT EXISTS crossings (
    symbol VARCHAR, side VARCHAR, created_ts TIMESTAMP, liquidation_price DOUBLE, consumed_bar_ts TIMESTAMP,
    consumed_ts TIMESTAMP, blown_through BOOLEAN);
CREATE OR REPLACE TABLE recrossed AS
WITH reach AS (SELECT symbol, min(low) AS low, max(high) AS high FROM trigger_bars WHERE ts >= rebuild_from() GROUP BY symbol)
SELECT c.symbol, c.side, c.created_ts, c.liquidation_price
FROM crossings c LEFT JOIN reach r USING (symbol)
WHERE c.created_ts >= rebuild_from() OR c.consumed_bar_ts >= rebuild_from()
   OR c.consumed_bar_ts IS NULL AND CASE c.side WHEN 'long' THEN c.liquidation_price >= r.low ELSE c.liquidation_price <= r.high END;
DELETE FROM crossings c USING recrossed r
WHERE c.symbol = r.symbol AND c.side = r.side AND c.created_ts = r.created_ts AND c.liquidation_price = r.liquidation_price;
INSERT INTO recrossed   -- and the new pieces' (an earlier piece has its crossing, or is in recrossed already)
SELECT DISTINCT symbol, side, created_ts, liquidation_price FROM pieces p
ANTI JOIN crossings c USING (symbol, side, created_ts, liquidation_price)
WHERE p.created_ts >= rebuild_from();
INSERT INTO crossings BY NAME
WITH RECURSIVE triggers AS (
    SELECT row_number() OVER () AS trigger_id, k.*, b.symbol_id, b.bar_index AS first_bar,
           greatest(b.bar_index, f.first_bar) AS start_bar   -- (NULL where no bar opened after the piece)
    FROM (SELECT symbol, side, created_ts, liquidation_price, any_value(entry_price) AS entry_price
          FROM pieces SEMI JOIN recrossed USING (symbol, side, created_ts, liquidation_price) GROUP BY ALL) k
    ASOF LEFT JOIN trigger_bars b ON k.symbol = b.symbol AND k.created_ts <= b.ts
    LEFT JOIN trigger_ranges_from f ON f.symbol_id = b.symbol_id
),
ranges AS MATERIALIZED (   -- the runs a descent can read: from the first bar from rebuild_from() on
    SELECT r.* FROM trigger_ranges r JOIN trigger_ranges_from f ON range_symbol(r.range_key) = f.symbol_id
    WHERE range_bar(r.range_key) >= f.first_bar
),
descent(trigger_id, symbol_id, side, liquidation_price, bar_index, k) USING KEY (trigger_id) AS (
    SELECT trigger_id, symbol_id, side, liquidation_price, start_bar, top_range_level() FROM triggers
    UNION
    SELECT d.trigger_id, d.symbol_id, d.side, d.liquidation_price,
           d.bar_index + CASE WHEN d.side = 'long' AND r.low > d.liquidation_price
                               OR d.side = 'short' AND r.high < d.liquidation_price THEN 1::BIGINT << d.k ELSE 0 END,
           d.k - 1
    FROM descent d JOIN ranges r ON r.range_key = range_key(d.k, d.symbol_id, d.bar_index)
    WHERE d.k >= 0
),
crossed AS (     -- the crossing bar, and how many bars came between the opening and it
    SELECT t.*, b.bar_index, b.ts AS consumed_bar_ts, b.end_ts AS consumed_ts, b.bar_index - t.first_bar AS bars_before,
           floor(log2(greatest(1, b.bar_index - t.first_bar)))::BIGINT AS k,
           t.entry_price + param('stop_distance_share') * (t.liquidation_price - t.entry_price) AS stop_price
    FROM triggers t JOIN descent d USING (trigger_id)
    LEFT JOIN trigger_bars b ON b.symbol_id = d.symbol_id AND b.bar_index = d.bar_index
)
SELECT c.symbol, c.side, c.created_ts, c.liquidation_price, c.consumed_bar_ts, c.consumed_ts,
       -- blown through: no bar between the opening and the crossing one reached the stop, so the
       -- crossing bar went through stop and liquidation price at once (the low/high of those bars is
       -- that of two overlapping runs of 2^k bars in the sparse table, sql/models/inputs.sql)
       CASE WHEN c.bar_index IS NULL THEN NULL
            WHEN c.bars_before = 0 THEN true
            WHEN c.side = 'long' THEN least(r1.low, r2.low) > c.stop_price
            ELSE greatest(r1.high, r2.high) < c.stop_price
       END AS blown_through
FROM crossed c
LEFT JOIN trigger_ranges r1 ON c.bars_before > 0 AND r1.range_key = range_key(c.k, c.symbol_id, c.first_bar)
LEFT JOIN trigger_ranges r2 ON c.bars_before > 0
    AND r2.range_key = range_key(c.k, c.symbol_id, c.bar_index - (1::BIGINT << c.k));

-- Layer 3d: the level lifecycle, shared by every model. Each opening is spread over the two sides
-- (by its long share) and the leverage tiers (by weight); each piece gets its exact liquidation price
-- and price bucket. A piece stays alive until consumed (the first trigger bar after it opened whose
-- range crosses its exact liquidation price: those positions are taken as liquidated) and shrinks when
-- open interest falls by more than the model's own liquidations explain. Set-based throughout.

CREATE OR REPLACE TABLE pieces AS
WITH openings AS (
    SELECT * FROM openings_binance_standard
    UNION ALL SELECT * FROM openings_funding_adjusted
    UNION ALL SELECT * FROM openings_trade_flow
    UNION ALL SELECT * FROM openings_ensemble
)
SELECT * FROM (
    SELECT o.model, o.symbol, o.created_ts, s.side, t.leverage, o.entry_price,
           o.volume_usd * t.weight * CASE s.side WHEN 'long' THEN o.long_share ELSE 1 - o.long_share END AS volume_usd,
           -- a tier's bracket comes from its typical position's notional, not from open interest
           liquidation_price_in_bracket(s.side, o.entry_price, t.leverage, t.typical_notional_usd,
                                        t.maintenance_margin_rate, t.maintenance_amount_usd) AS liquidation_price
    FROM openings o
    CROSS JOIN (VALUES ('long'), ('short')) s(side)
    JOIN tier_brackets t USING (symbol)
) WHERE volume_usd > 0;

-- When each liquidation price is first crossed: a long at LP by the first trigger bar at or after it
-- opened whose low is at or below LP, a short by the first whose high is at or above LP. Binary descent
-- over the sparse table of bar extremes (sql/20_model_inputs.sql, trigger_ranges): from the largest run
-- of bars down to one bar, skip a run whenever it stays entirely on the safe side of LP. What is left
-- is the first crossing bar, exactly (a position past the last bar was never crossed). Pieces of
-- different models that share (symbol, side, open time, LP) share the answer, so it is asked once.
CREATE OR REPLACE TABLE crossings AS
WITH RECURSIVE triggers AS (
    SELECT row_number() OVER () AS trigger_id, k.*, b.symbol_id, b.bar_index AS first_bar
    FROM (SELECT DISTINCT symbol, side, created_ts, liquidation_price FROM pieces) k
    ASOF LEFT JOIN trigger_bars b ON k.symbol = b.symbol AND k.created_ts <= b.ts
),
descent(trigger_id, symbol_id, side, liquidation_price, bar_index, k) USING KEY (trigger_id) AS (
    SELECT trigger_id, symbol_id, side, liquidation_price, first_bar, top_range_level() FROM triggers
    UNION
    SELECT d.trigger_id, d.symbol_id, d.side, d.liquidation_price,
           d.bar_index + CASE WHEN d.side = 'long' AND r.low > d.liquidation_price
                               OR d.side = 'short' AND r.high < d.liquidation_price THEN 1::BIGINT << d.k ELSE 0 END,
           d.k - 1
    FROM descent d JOIN trigger_ranges r ON r.range_key = range_key(d.k, d.symbol_id, d.bar_index)
    WHERE d.k >= 0
)
SELECT t.symbol, t.side, t.created_ts, t.liquidation_price, b.ts AS consumed_bar_ts, b.end_ts AS consumed_ts
FROM triggers t JOIN descent d USING (trigger_id)
LEFT JOIN trigger_bars b ON b.symbol_id = d.symbol_id AND b.bar_index = d.bar_index;

-- The scale of alive levels, per model and side. When open interest falls by a share f in a step and
-- the model says a share c of its alive levels on that side was liquidated in the same step, those
-- liquidations already explain c of the fall (a liquidation closes contracts too): only max(0, f - c)
-- was closed by hand, and the levels still alive shrink by that, as a share of what was left
-- (1 - max(0, f - c) / (1 - c)). c is measured on volumes weighed with the gross scale (every fall
-- shrinking everything), a one-pass stand-in for the exact recurrence, which would be sequential.
-- Every contract has a long and a short, so f applies to each side, and c is each side's own.
CREATE OR REPLACE TABLE level_scale AS
WITH gross AS (
    SELECT symbol, ts, sum(ln(1 - closed_share)) OVER (PARTITION BY symbol ORDER BY ts) AS log_scale FROM oi_falls
),
weighed AS (
    SELECT p.model, p.symbol, p.side, p.created_ts, c.consumed_ts, p.volume_usd / exp(coalesce(g.log_scale, 0)) AS v
    FROM pieces p JOIN crossings c USING (symbol, side, created_ts, liquidation_price)
    ASOF LEFT JOIN gross g ON p.symbol = g.symbol AND p.created_ts >= g.ts
),
events AS (        -- openings and consumptions in the open-interest step that holds them: (previous_ts, ts]
    SELECT w.model, w.symbol, w.side, s.ts, w.v AS opened, 0 AS consumed
    FROM weighed w ASOF JOIN oi_falls s ON w.symbol = s.symbol AND w.created_ts <= s.ts
    UNION ALL
    SELECT w.model, w.symbol, w.side, s.ts, 0, w.v
    FROM weighed w ASOF JOIN oi_falls s ON w.symbol = s.symbol AND w.consumed_ts <= s.ts
),
steps AS (
    SELECT m.model, m.side, s.symbol, s.ts, s.closed_share,
           coalesce(sum(e.opened), 0) AS opened, coalesce(sum(e.consumed), 0) AS consumed
    FROM oi_falls s JOIN (SELECT DISTINCT model, symbol, side FROM pieces) m USING (symbol)
    LEFT JOIN events e USING (model, symbol, side, ts)
    GROUP BY ALL
),
shares AS (
    -- what could be consumed in a step: alive before it, plus what opened in it
    SELECT *, consumed / nullif(sum(opened - consumed) OVER w + consumed, 0) AS consumed_share
    FROM steps WINDOW w AS (PARTITION BY model, symbol, side ORDER BY ts ROWS UNBOUNDED PRECEDING)
)
SELECT model, symbol, side, ts,
       sum(CASE WHEN closed_share > 0 AND coalesce(consumed_share, 0) < 1
                THEN ln(greatest(1e-9, 1 - greatest(0, closed_share - coalesce(consumed_share, 0))
                                           / (1 - coalesce(consumed_share, 0))))
                ELSE 0 END) OVER (PARTITION BY model, symbol, side ORDER BY ts) AS log_scale
FROM shares;

-- Every piece with its fate. scale_free_volume is the volume divided by the scale at its opening, so
-- that alive(t) = scale_free_volume * exp(log_scale(t)) for a model and side; a consumed piece is
-- valued with the scale before the step that consumed it (its shrink is netted of the consumption).
CREATE OR REPLACE TABLE positions AS
WITH fated AS (
    SELECT p.*, c.consumed_bar_ts, c.consumed_ts
    FROM pieces p JOIN crossings c USING (symbol, side, created_ts, liquidation_price)
),
opened AS (
    SELECT f.*, coalesce(s.log_scale, 0) AS created_log_scale
    FROM fated f ASOF LEFT JOIN level_scale s
        ON f.model = s.model AND f.symbol = s.symbol AND f.side = s.side AND f.created_ts >= s.ts
)
SELECT o.model, o.symbol, o.created_ts, o.side, o.leverage, o.entry_price, o.liquidation_price,
       floor(o.liquidation_price / param('price_bucket_usd'))::BIGINT AS bucket_index,
       floor(o.liquidation_price / param('price_bucket_usd')) * param('price_bucket_usd') AS price_bucket,
       o.volume_usd, o.volume_usd / exp(o.created_log_scale) AS scale_free_volume,
       o.consumed_bar_ts, o.consumed_ts,
       CASE WHEN o.consumed_ts IS NOT NULL
            THEN o.volume_usd * exp(coalesce(c.log_scale, 0) - o.created_log_scale) END AS consumed_volume_usd
FROM opened o ASOF LEFT JOIN level_scale c
    ON o.model = c.model AND o.symbol = c.symbol AND o.side = c.side AND o.consumed_ts > c.ts;

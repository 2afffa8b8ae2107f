-- Layer 3d: the level lifecycle, shared by every model. Each opening is spread over the two sides
-- (by its long share) and the leverage tiers (by weight); each piece gets its exact liquidation price
-- and price bucket. A piece stays alive until consumed (the first trigger bar after it opened that
-- trades into its bucket: those positions are taken as liquidated) and shrinks with open interest
-- (sql/20_model_inputs.sql, oi_scale). Set-based throughout: the first touch is an ASOF join.
CREATE OR REPLACE TABLE positions AS
WITH openings AS (
    SELECT * FROM openings_binance_standard
    UNION ALL SELECT * FROM openings_funding_adjusted
    UNION ALL SELECT * FROM openings_trade_flow
    UNION ALL SELECT * FROM openings_ensemble
),
pieces AS (
    SELECT o.model, o.symbol, o.created_ts, s.side, t.leverage, o.entry_price,
           o.volume_usd * t.weight * CASE s.side WHEN 'long' THEN o.long_share ELSE 1 - o.long_share END AS volume_usd,
           -- a tier's bracket comes from its typical position's notional, not from open interest
           liquidation_price_in_bracket(s.side, o.entry_price, t.leverage, t.typical_notional_usd,
                                        t.maintenance_margin_rate, t.maintenance_amount_usd) AS liquidation_price
    FROM openings o
    CROSS JOIN (VALUES ('long'), ('short')) s(side)
    JOIN tier_brackets t USING (symbol)
),
bucketed AS (
    SELECT *, floor(liquidation_price / param('price_bucket_usd'))::BIGINT AS bucket_index
    FROM pieces WHERE volume_usd > 0 AND liquidation_price > 0
),
touched AS (
    SELECT b.*, t.ts AS consumed_bar_ts, t.end_ts AS consumed_ts
    FROM bucketed b ASOF LEFT JOIN bucket_touches t
        ON b.symbol = t.symbol AND b.bucket_index = t.bucket_index AND b.created_ts <= t.ts
),
scaled AS (
    SELECT t.*, s.log_scale AS created_log_scale
    FROM touched t ASOF LEFT JOIN oi_scale s ON t.symbol = s.symbol AND t.created_ts >= s.ts
)
SELECT s.model, s.symbol, s.created_ts, s.side, s.leverage, s.entry_price, s.liquidation_price,
       s.bucket_index, s.bucket_index * param('price_bucket_usd') AS price_bucket,
       s.volume_usd,
       -- the volume divided by the open-interest scale at creation: alive(t) = scale_free_volume * scale(t)
       s.volume_usd / exp(coalesce(s.created_log_scale, 0)) AS scale_free_volume,
       s.consumed_bar_ts, s.consumed_ts,
       CASE WHEN s.consumed_ts IS NOT NULL
            THEN s.volume_usd * exp(coalesce(c.log_scale, 0) - coalesce(s.created_log_scale, 0)) END AS consumed_volume_usd
FROM scaled s ASOF LEFT JOIN oi_scale c ON s.symbol = c.symbol AND s.consumed_bar_ts >= c.ts;

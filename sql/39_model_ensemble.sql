-- Model ensemble: a weighted mix of the three models (weights 0.5 / 0.3 / 0.2 by default, as in
-- this project's seed plan). The lifecycle is linear in volume, so mixing the models' openings with
-- these weights gives exactly the weighted mix of their heatmaps, levels and predicted liquidations
-- per time, price bucket and side. Weights renormalise over the models that have data for a symbol
-- (no aggTrades -> no trade_flow -> binance_standard 0.625, funding_adjusted 0.375).
CREATE OR REPLACE VIEW openings_ensemble AS
WITH parts AS (
    SELECT * FROM openings_binance_standard
    UNION ALL SELECT * FROM openings_funding_adjusted
    UNION ALL SELECT * FROM openings_trade_flow
),
present AS (SELECT DISTINCT symbol, model, param('weight_' || model) AS weight FROM parts),
weights AS (SELECT symbol, model, weight / sum(weight) OVER (PARTITION BY symbol) AS weight FROM present)
SELECT 'ensemble' AS model, p.symbol, p.created_ts, p.entry_price, p.volume_usd * w.weight AS volume_usd, p.long_share
FROM parts p JOIN weights w USING (symbol, model)
WHERE w.weight > 0;

-- Model ensemble: a weighted mix of the three models (weights 0.5 / 0.3 / 0.2 by default, as in
-- this project's seed plan), in which a weight is a share of the ensemble's volume. The models open
-- very different amounts (trade_flow, from every large taker trade, opens several times what the
-- open-interest models do), so each model's openings are first rescaled to the same total per symbol:
-- the mean of the models' totals over the build, from their own openings (no realized data). Then
-- weight 0.2 means 20 % of the ensemble's opened volume. The lifecycle is linear in volume, so the
-- ensemble's heatmap, levels and predictions are that mix of the models'. Weights renormalise over the
-- models that have data for a symbol (no aggTrades -> no trade_flow -> binance_standard 0.625,
-- funding_adjusted 0.375).
CREATE OR REPLACE VIEW openings_ensemble AS
WITH parts AS (
    SELECT * FROM openings_binance_standard
    UNION ALL SELECT * FROM openings_funding_adjusted
    UNION ALL SELECT * FROM openings_trade_flow
),
totals AS (SELECT symbol, model, sum(volume_usd) AS opened_usd, param('weight_' || model) AS weight FROM parts GROUP BY ALL),
weights AS (
    SELECT symbol, model,
           weight / sum(weight) OVER (PARTITION BY symbol)     -- the share of the ensemble
           * avg(opened_usd) OVER (PARTITION BY symbol) / opened_usd AS factor  -- per unit of the model's volume
    FROM totals WHERE opened_usd > 0
)
SELECT 'ensemble' AS model, p.symbol, p.created_ts, p.entry_price, p.volume_usd * w.factor AS volume_usd, p.long_share
FROM parts p JOIN weights w USING (symbol, model)
WHERE w.factor > 0;

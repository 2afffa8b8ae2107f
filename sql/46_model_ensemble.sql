-- Model ensemble: a weighted mix of the three models' pieces, in which a weight is a share of the
-- ensemble's volume. The models open very different amounts (trade_flow, from every large taker trade,
-- opens several times what the open-interest models do), so each model's pieces are first rescaled to
-- the models' mean opened volume on the first day (ensemble_base, sql/45_calibration.sql); then weight
-- 0.2 means 20 % of the ensemble's volume (defaults 0.5 / 0.3 / 0.2, this project's seed plan; they
-- renormalise over the models with data: no aggTrades -> no trade_flow).
-- Where realized liquidations exist the mix is fitted walk-forward (sql/45_calibration.sql). A fit's
-- weights a_model x s_role x q_tier are split into its overall scale S (fitted / default volume of its
-- training windows) and a shape (the weights / S). A piece is opened with the shape of the fit in force
-- when it opened (1 before the first fit); the scale applies to every alive level from each refit on
-- (ensemble_scale, through sql/50_lifecycle.sql), so levels opened under different fits stay comparable;
-- and the ensemble's levels fade at the fitted half-life from each refit on. No fit reads realized data
-- from after the time it is used at, so the ensemble's backtest stays a forecast. The lifecycle is linear
-- in volume, so the ensemble's heatmap, levels and predictions are that mix of the models' pieces.
INSERT INTO pieces BY NAME
SELECT * FROM (
SELECT 'ensemble' AS model, p.symbol, p.created_ts, p.side, p.leverage, p.entry_price, p.liquidation_price,
       -- a fitted stop-loss share keeps (1 - share) of a slowly crossed level where the pieces keep (1 - default)
       p.volume_usd * e.factor
           * coalesce(w.weight * (1 - w.stop_loss_share) / (1 - param('stop_loss_share')) / c.kept_share, 1) AS volume_usd,
       p.side_role
FROM pieces p
JOIN ensemble_base e USING (symbol, model)
ASOF LEFT JOIN calibration_fits f ON f.symbol = p.symbol AND p.created_ts >= f.applies_from
LEFT JOIN ensemble_weights w ON w.fit_id = f.fit_id AND w.model = p.model AND w.side_role = p.side_role
    AND w.leverage = p.leverage
LEFT JOIN calibration_scores c ON c.fit_id = f.fit_id
WHERE p.model <> 'ensemble' AND p.created_ts >= rebuild_from()   -- (the earlier ones are kept: sql/40_pieces.sql)
) WHERE volume_usd > 0;

-- What every model assumes over time: the default fade half-life, stop-loss share and unmodelled share,
-- and the ensemble's fitted ones from each refit on (the fade in sql/50_lifecycle.sql; the stop-loss
-- share, which sets how much a blown-through level liquidates, and the unmodelled part, which only the
-- ensemble forecasts, in sql/70_backtest.sql).
CREATE OR REPLACE TABLE fit_schedule AS
SELECT DISTINCT model, symbol, '-infinity'::TIMESTAMP AS from_ts, param('fade_half_life_h') AS half_life_h,
       param('stop_loss_share') AS stop_loss_share, param('unmodelled_share') AS unmodelled_share
FROM pieces
UNION ALL
SELECT 'ensemble', f.symbol, f.applies_from, t.half_life_h, t.stop_loss_share, u.unmodelled_share
FROM calibration_fits f JOIN calibration_tier_fit t USING (fit_id) JOIN calibration_unmodelled_fit u USING (fit_id);

-- The ensemble's overall fitted scale S from each refit on, as a log (0 before the first fit).
CREATE OR REPLACE TABLE ensemble_scale AS
SELECT f.symbol, f.applies_from AS from_ts, ln(s.kept_share) AS log_scale
FROM calibration_fits f JOIN calibration_scores s USING (fit_id) WHERE s.kept_share > 0;

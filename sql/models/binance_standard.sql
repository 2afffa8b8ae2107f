-- Model binance_standard: new open interest is new positions, on both sides.
-- Assumes:
--  * Every contract has a long and a short: a rise of X in open interest (above the noise threshold)
--    opens X of longs and X of shorts, at the step's price (VWAP of the finest klines that closed in the
--    step, or the last close when bars are coarser). What differs between the sides is leverage.
--  * The side that opened aggressively holds more leverage: the signal is the step's taker imbalance
--    (klines' taker_buy_volume against volume), s = tanh(imbalance / taker_imbalance_scale); s > 0 tilts
--    the longs' leverage mix up and the shorts' down (side_leverage_tilt, sql/models/pieces.sql).
--  * Churn: as much as fades from the alive levels is reopened at the step's price (oi_steps.churn_usd).
--  * Warm start: the open interest at the first row, spread around the first price (prior_openings).
-- Source: open-interest-delta estimators (Coinglass / Hyblock describe the same idea),
-- with the two-sided contract from the exchange's own accounting (open interest = longs = shorts).
-- Every model yields "openings": volume opened on each side at a time and price, with a signal of
-- which side is levered; the shared lifecycle (sql/models/pieces.sql, sql/lifecycle/positions.sql) turns them
-- into leveraged positions, levels and their fate.
CREATE OR REPLACE VIEW openings_binance_standard AS
SELECT 'binance_standard' AS model, symbol, ts AS created_ts, entry_price, entry_price AS reference_price,
       opened_usd AS volume_usd,
       tanh(taker_imbalance / param('taker_imbalance_scale')) AS signal
FROM oi_steps
UNION ALL
SELECT 'binance_standard', symbol, created_ts, entry_price, reference_price, volume_usd, 0 FROM prior_openings;

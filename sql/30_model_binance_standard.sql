-- Model binance_standard: new open interest is new positions.
-- Assumes: every rise in open interest above the noise threshold is positions opened during that
-- interval at its price (VWAP of the finest klines, or the last close when bars are coarser), split
-- long/short by Binance's account long/short ratio r (long share r / (1 + r); 50/50 without it),
-- and spread over the leverage tiers by their weights (sql/seeds/leverage_tiers.csv).
-- Source of the idea: open-interest-delta estimators (domain.md §4; this project's seed plan).
-- Every model yields "openings": volume opened at a time and price with a long share; the shared
-- lifecycle (sql/50_lifecycle.sql) turns them into leveraged positions, levels and their fate.
CREATE OR REPLACE VIEW openings_binance_standard AS
SELECT 'binance_standard' AS model, symbol, ts AS created_ts, entry_price, delta_usd AS volume_usd,
       account_long_share AS long_share
FROM oi_steps
WHERE delta_usd > noise_threshold_usd;

-- Model funding_adjusted: binance_standard's openings, with the levered side told by crowding.
-- Assumes:
--  * The same openings on both sides as binance_standard (the contract has two sides, whatever funding says).
--  * Funding says which side is crowded and pays to stay: above neutral (0.01 % per 8 h) the longs,
--    below it the shorts. The crowded side holds the leverage (it is the side that gets squeezed).
--  * Binance's account long/short ratio above the top traders' position ratio says the same: the many
--    small accounts lean one way, the large positions the other, and small accounts use high leverage.
--  * signal s = tanh((funding_8h - neutral) / funding_tilt_scale + (account long share - top traders'
--    long share) / crowding_scale); the crowded side's leverage mix tilts up by leverage^(tilt x s).
--    Funding is taken per 8 h (oi_steps.funding_rate_8h): 0.01 % every hour is 0.08 % per 8 h.
-- What it changes against binance_standard: which side is levered, and by how much, so where the
-- levels sit (a levered side's levels lie close to the price); the volume opened is the same.
-- Sources: funding as a crowding gauge (Binance's funding-rate documentation); the
-- account vs top-trader ratios are Binance's own metrics.
CREATE OR REPLACE VIEW openings_funding_adjusted AS
SELECT 'funding_adjusted' AS model, symbol, ts AS created_ts, entry_price, entry_price AS reference_price,
       opened_usd AS volume_usd,
       tanh((coalesce(funding_rate_8h, param('funding_neutral_rate')) - param('funding_neutral_rate'))
                / param('funding_tilt_scale')
            + (account_long_share - top_trader_long_share) / param('crowding_scale')) AS signal
FROM oi_steps
UNION ALL
SELECT 'funding_adjusted', symbol, created_ts, entry_price, reference_price, volume_usd, 0 FROM prior_openings;

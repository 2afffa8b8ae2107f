-- Model funding_adjusted: binance_standard with the long/short split tilted by funding.
-- Assumes: a funding rate above neutral (0.01 % per 8 h) means longs are crowded, so more of the new
-- open interest is long; below neutral, more is short. The mapping is
--     long_share = clamp(account_long_share + tilt_max * tanh((funding - neutral) / tilt_scale), 0.01, 0.99)
-- (tilt_max 0.2, tilt_scale 0.0005: funding of 0.06 % per 8 h moves the share by 0.15). Funding is
-- taken per 8 h (oi_steps.funding_rate_8h): 0.01 % every hour is 0.08 % per 8 h, far above neutral. The seed plan
-- (domain.md §4) used 0.5 + 0.2 tanh(50 funding), which moves the share by 0.001 at typical rates:
-- too little to matter, hence the explicit scale. The funding rate is the last one at or before
-- the open-interest row.
CREATE OR REPLACE VIEW openings_funding_adjusted AS
SELECT 'funding_adjusted' AS model, symbol, ts AS created_ts, entry_price, delta_usd AS volume_usd,
       greatest(0.01, least(0.99, account_long_share + param('funding_tilt_max')
           * tanh((coalesce(funding_rate_8h, param('funding_neutral_rate')) - param('funding_neutral_rate'))
                  / param('funding_tilt_scale')))) AS long_share
FROM oi_steps
WHERE delta_usd > noise_threshold_usd;

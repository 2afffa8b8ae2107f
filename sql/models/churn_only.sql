-- Model churn_only: binance_standard without open-interest deltas. It opens only the churn (what fades
-- from the alive levels is reopened at the step's price: oi_steps.churn_usd) and the warm start, with
-- binance_standard's signal of the levered side. It is scored beside the other models so that what the
-- open-interest deltas add is measured, not assumed: on real hourly data (issue 28) about 90 % of the
-- openings were churn, and a build with the deltas switched off scored the same as binance_standard.
CREATE OR REPLACE VIEW openings_churn_only AS
SELECT 'churn_only' AS model, symbol, ts AS created_ts, entry_price, entry_price AS reference_price,
       churn_usd AS volume_usd,
       tanh(taker_imbalance / param('taker_imbalance_scale')) AS signal
FROM oi_steps
UNION ALL
SELECT 'churn_only', symbol, created_ts, entry_price, reference_price, volume_usd, 0 FROM prior_openings;

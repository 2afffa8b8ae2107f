-- What each fit says, in the defaults' terms, one row per fit and parameter, with its window and score
-- (fade_half_life_h is not fitted: the one half-life of churn and fade, above):
--   leverage_share_<L>x      the fitted leverage mix: the default tier weight x q, as shares;
--   levered_side_ratio       s_levered / s_other: how much more of the levered side's crossed levels is
--                            liquidated (1: the signal's side split adds nothing);
--   weight_<model>           each model's share of the ensemble's volume;
--   stop_loss_share          the share of a level that stops close when price crosses it slowly (a level
--                            blown through liquidates whole): 1 / (1 - share) is how much more a fast
--                            crossing liquidates than a slow one;
--   volume_scale             the fitted volume over the unfitted ensemble's, on the training windows;
--   unmodelled_share         the share of open interest x the share of price crossed that is liquidated
--                            beyond the levels (stage 4).
CREATE OR REPLACE TABLE fitted_parameters AS
WITH values AS (
    SELECT t.fit_id, 'leverage_share_' || l.leverage || 'x' AS parameter,
           l.weight * t.tier_weights[f.j] / sum(l.weight * t.tier_weights[f.j]) OVER (PARTITION BY t.fit_id) AS value
    FROM calibration_tier_fit t CROSS JOIN leverage_tiers l
    JOIN calibration_features f ON f.stage = 'tier' AND f.feature = l.leverage::VARCHAR
    UNION ALL
    SELECT fit_id, 'levered_side_ratio', role_weights[1] / nullif(role_weights[2], 0) FROM calibration_role_fit
    UNION ALL
    SELECT a.fit_id, 'weight_' || f.feature,
           a.model_weights[f.j] * param('weight_' || f.feature)
           / sum(a.model_weights[f.j] * param('weight_' || f.feature)) OVER (PARTITION BY a.fit_id)
    FROM calibration_model_fit a JOIN calibration_features f ON f.stage = 'model'
    UNION ALL
    SELECT fit_id, 'stop_loss_share', stop_loss_share FROM calibration_tier_fit
    UNION ALL
    SELECT fit_id, 'volume_scale', kept_share FROM calibration_scores
    UNION ALL
    SELECT fit_id, 'unmodelled_share', unmodelled_share FROM calibration_unmodelled_fit
)
SELECT f.symbol, f.fit_id, f.train_from, f.train_to, f.applies_from, f.applies_to, v.parameter, v.value,
       s.train_windows, s.train_pearson, s.test_pearson, s.default_test_pearson
FROM values v JOIN calibration_fits f USING (fit_id) JOIN calibration_scores s USING (fit_id)
ORDER BY f.symbol, f.applies_from, v.parameter;

-- Parameters layer: model parameters, as data. Each comes from a CSV under sql/seeds/ that the user can
-- replace (build.py --maintenance-brackets, --leverage-tiers, --parameters) or override one by one (--param NAME=VALUE);
-- build.py puts the file names in DuckDB variables and the overrides in parameter_overrides.

-- Binance's maintenance margin brackets: the bracket is chosen by the individual
-- position's notional, never by the total open interest.
CREATE OR REPLACE TABLE maintenance_brackets AS
SELECT * FROM read_csv(getvariable('maintenance_brackets_file'), header = true, auto_detect = false, columns = {
    'symbol': 'VARCHAR', 'bracket': 'INTEGER', 'notional_cap_usd': 'DOUBLE', 'max_leverage': 'INTEGER',
    'maintenance_margin_rate': 'DOUBLE', 'maintenance_amount_usd': 'DOUBLE'});

-- The leverage mix new positions are spread over, and the notional of a typical position in each
-- tier, which picks its maintenance bracket.
CREATE OR REPLACE TABLE leverage_tiers AS
SELECT * FROM read_csv(getvariable('leverage_tiers_file'), header = true, auto_detect = false, columns = {
    'leverage': 'INTEGER', 'weight': 'DOUBLE', 'typical_notional_usd': 'DOUBLE'});

CREATE OR REPLACE TABLE model_parameters AS
SELECT p.name, coalesce(o.value, p.value) AS value, o.value IS NOT NULL AS overridden, p.description
FROM read_csv(getvariable('model_parameters_file'), header = true, auto_detect = false,
              columns = {'name': 'VARCHAR', 'value': 'DOUBLE', 'description': 'VARCHAR'}) p
LEFT JOIN parameter_overrides o USING (name);

-- A parameter's value, as a constant: DuckDB folds it into each query when it plans it. (Read from the
-- table with a subquery, every use is a join of every row against it: the heatmap's positions would
-- go through three nested-loop joins for time_bucket_s alone.) sql/outputs/published.sql defines
-- it again over the table for users of the .duckdb file, where the build's variable is gone.
SET VARIABLE model_parameter_values = (SELECT map(list(name), list(value)) FROM model_parameters);
CREATE OR REPLACE MACRO param(parameter_name) AS getvariable('model_parameter_values')[parameter_name];

-- Refuse parameters that cannot be right, with a message naming them.
SELECT CASE
    WHEN (SELECT count(*) FROM parameter_overrides WHERE name NOT IN (SELECT name FROM model_parameters)) > 0
        THEN error('unknown model parameter(s): ' || (SELECT string_agg(name, ', ') FROM parameter_overrides
                   WHERE name NOT IN (SELECT name FROM model_parameters))
                   || '; known: ' || (SELECT string_agg(name, ', ' ORDER BY name) FROM model_parameters))
    WHEN abs((SELECT sum(weight) FROM leverage_tiers) - 1) > 1e-6
        THEN error('leverage tier weights must add up to 1, they add up to ' || (SELECT sum(weight) FROM leverage_tiers))
    WHEN (SELECT min(weight) FROM leverage_tiers) < 0 OR (SELECT min(leverage) FROM leverage_tiers) < 1
        THEN error('leverage tiers need leverage >= 1 and weight >= 0')
    WHEN (SELECT count(*) FROM maintenance_brackets) = 0 THEN error('the maintenance bracket table is empty')
    WHEN (SELECT value FROM model_parameters WHERE name = 'price_bucket_usd') <= 0
      OR (SELECT value FROM model_parameters WHERE name = 'time_bucket_s') < 60
        THEN error('price_bucket_usd must be > 0 and time_bucket_s >= 60')
    -- (an incremental build recomputes from a UTC day on: sql/sources/macros.sql, rebuild_from)
    WHEN 86400 % param('time_bucket_s')::BIGINT <> 0 OR 86400 % param('trade_flow_bucket_s')::BIGINT <> 0
        THEN error('time_bucket_s and trade_flow_bucket_s must divide a day (86400 s), e.g. 300, 900 or 3600; got '
                   || param('time_bucket_s') || ' and ' || param('trade_flow_bucket_s'))
    WHEN NOT (param('stop_loss_share') >= 0 AND param('stop_loss_share') < 1
              AND param('stop_distance_share') BETWEEN 0 AND 1 AND param('calibration_cell_share') >= 0)
        THEN error('stop_loss_share must be in [0, 1), stop_distance_share in [0, 1] and calibration_cell_share >= 0')
    WHEN NOT (param('forecast_ridge') >= 0 AND param('backtest_resamples') >= 1 AND param('backtest_warmup_s') >= 0)
        THEN error('forecast_ridge must be >= 0, backtest_resamples >= 1 and backtest_warmup_s >= 0')
END;

-- The horizons, from build.py --horizons (default 1h,4h,24h). Levels at t come from the heatmap's
-- time grid, so a horizon must be a whole number of its time buckets.
CREATE OR REPLACE TABLE backtest_horizons AS
SELECT trim(h) AS horizon, interval_seconds(trim(h)) AS horizon_s
FROM unnest(string_split(coalesce(getvariable('backtest_horizons'), '1h,4h,24h'), ',')) t(h);
SELECT CASE WHEN (SELECT count(*) FROM backtest_horizons WHERE horizon_s IS NULL OR horizon_s <= 0
                  OR horizon_s % param('time_bucket_s')::BIGINT <> 0) > 0
    THEN error('--horizons: each horizon must be a Binance interval (1h, 4h, 1d ...) that is a whole number of '
               || 'time buckets (time_bucket_s = ' || param('time_bucket_s')::BIGINT || ' s); got '
               || getvariable('backtest_horizons')) END;

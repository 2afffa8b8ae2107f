-- Output tables: what build.py exports to SQLite (the tables metadata.yml describes) and what
-- Datasette serves. Times stay TIMESTAMP here; the export writes them as ISO-8601 UTC text.

-- The series as the models read them (views: the persisted stg_ tables hold the rows, and an incremental
-- build extends those). The trade-price bars are the finest interval present: the price line of the charts.
CREATE OR REPLACE VIEW price_klines AS
SELECT symbol, ts, kline_interval, open, high, low, close, volume, quote_volume_usd
FROM stg_price_klines ORDER BY symbol, ts;

CREATE OR REPLACE VIEW open_interest AS
SELECT symbol, ts, open_interest, open_interest_usd, long_short_account_ratio, top_trader_account_ratio,
       top_trader_position_ratio, taker_buy_sell_ratio
FROM stg_open_interest ORDER BY symbol, ts;

CREATE OR REPLACE VIEW funding_rates AS
SELECT symbol, ts, funding_interval_hours, funding_rate FROM stg_funding_rates ORDER BY symbol, ts;

-- Every file found, whether it was loaded, and how many rows it gave (counted when it was staged).
CREATE OR REPLACE TABLE source_files AS
SELECT path AS file, symbol, data_type, kline_interval, period, has_header, checksum, status, problem,
       coalesce(rows_read, 0) AS rows_read
FROM src_files ORDER BY symbol, data_type, period;

-- What an empty parameter of a stored query stands for: the queries in datasette.yaml fall back to it and the chart
-- pages' controls show it. The first symbol built; the ensemble; the 1-hour horizon where scored, else the shortest.
CREATE OR REPLACE TABLE query_defaults AS
SELECT (SELECT min(symbol) FROM coverage) AS symbol, 'ensemble' AS model,
       (SELECT horizon FROM backtest_horizons ORDER BY horizon <> '1h', horizon_s LIMIT 1) AS horizon;

-- SQLite names. Datasette serves a table before a stored query of the same name, and the stored
-- queries (datasette.yaml) need the short names heatmap, levels, liquidation_map, coverage and
-- data_quality for their pages; so those tables reach SQLite under these names. In DuckDB both work.
CREATE OR REPLACE VIEW heatmap_cells AS FROM heatmap;
CREATE OR REPLACE VIEW levels_latest AS FROM levels;
CREATE OR REPLACE VIEW liquidation_map_latest AS FROM liquidation_map;
CREATE OR REPLACE VIEW data_coverage AS FROM coverage;
CREATE OR REPLACE VIEW data_quality_problems AS FROM data_quality;

-- The views above and in the model layers read param(); once this file is closed the build's variable
-- (sql/parameters/parameters.sql) is gone, so whoever opens the .duckdb file gets param() over the table.
CREATE OR REPLACE MACRO param(parameter_name) AS
    (SELECT value FROM model_parameters WHERE name = parameter_name);

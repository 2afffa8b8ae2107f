-- Output tables: what build.py exports to SQLite (the tables metadata.yml describes) and what
-- Datasette serves. Times stay TIMESTAMP here; the export writes them as ISO-8601 UTC text.

-- The trade-price bars the models use (finest interval present): the price line of the charts.
CREATE OR REPLACE TABLE price_klines AS
SELECT symbol, ts, kline_interval, open, high, low, close, volume, quote_volume_usd
FROM stg_price_klines ORDER BY symbol, ts;

CREATE OR REPLACE TABLE open_interest AS
SELECT symbol, ts, open_interest, open_interest_usd, long_short_account_ratio, top_trader_account_ratio,
       top_trader_position_ratio, taker_buy_sell_ratio
FROM stg_open_interest ORDER BY symbol, ts;

CREATE OR REPLACE TABLE funding_rates AS
SELECT symbol, ts, funding_interval_hours, funding_rate FROM stg_funding_rates ORDER BY symbol, ts;

-- Every file found, whether it was loaded, and how many rows it gave.
CREATE OR REPLACE TABLE source_files AS
WITH row_counts AS (
    SELECT file_id, count(*) AS n FROM (
        SELECT file_id FROM src_metrics UNION ALL SELECT file_id FROM src_funding_rate
        UNION ALL SELECT file_id FROM src_klines UNION ALL SELECT file_id FROM src_agg_trades
        UNION ALL SELECT file_id FROM src_trades UNION ALL SELECT file_id FROM src_liquidation_snapshot
        UNION ALL SELECT file_id FROM src_force_orders UNION ALL SELECT file_id FROM src_liquidations_aggregated)
    GROUP BY file_id
)
SELECT f.path AS file, f.symbol, f.data_type, f.kline_interval, f.period, f.has_header, f.checksum,
       f.status, f.problem, coalesce(r.n, 0) AS rows_read
FROM src_files f LEFT JOIN row_counts r USING (file_id) ORDER BY f.symbol, f.data_type, f.period;

-- SQLite names. Datasette serves a table before a stored query of the same name, and the stored
-- queries (datasette.yaml) need the short names heatmap, levels, liquidation_map, coverage and
-- data_quality for their pages; so those tables reach SQLite under these names. In DuckDB both work.
CREATE OR REPLACE VIEW heatmap_cells AS FROM heatmap;
CREATE OR REPLACE VIEW levels_latest AS FROM levels;
CREATE OR REPLACE VIEW liquidation_map_latest AS FROM liquidation_map;
CREATE OR REPLACE VIEW data_coverage AS FROM coverage;
CREATE OR REPLACE VIEW data_quality_problems AS FROM data_quality;

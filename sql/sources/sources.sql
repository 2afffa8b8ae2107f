-- Sources layer. One table per Binance file type, with the columns exactly as Binance writes
-- them. stage.py reads each file once with DuckDB's read_csv into these tables, on a
-- connection of its own, and writes the valid rows, one per key, to Parquet in the cache
-- (sql/staging/files.sql). Rows that do not parse are not lost: DuckDB's reject tables are copied
-- into src_rejects, with file and line, and reported in the file's stage_quality rows. A build then
-- reads the cached Parquet: build.py turns each table with staged files into a view over them.
-- Every row carries file_id, pointing into src_files, which says which symbol, type and interval
-- the file holds (Binance puts those in the file's name and folders, not in its rows).

CREATE TABLE src_files (
    file_id        INTEGER PRIMARY KEY,
    path           VARCHAR NOT NULL,  -- the file as found under --data (zip or csv)
    symbol         VARCHAR NOT NULL,  -- from the file name, e.g. BTCUSDT
    data_type      VARCHAR NOT NULL,  -- metrics, fundingRate, klines, markPriceKlines, aggTrades, trades, liquidationSnapshot
    kline_interval VARCHAR,           -- 1m, 5m, 1h ... for the kline types, else NULL
    period         VARCHAR NOT NULL,  -- YYYY-MM-DD (daily file) or YYYY-MM (monthly file)
    has_header     BOOLEAN,           -- detected from the first line, never assumed
    checksum       VARCHAR NOT NULL,  -- 'ok', 'absent' (no .CHECKSUM beside it) or 'mismatch'
    status         VARCHAR NOT NULL,  -- 'loaded', 'quarantined' (not ingested; see problem) or 'skipped' (a CSV
                                      -- beside its zip, which is read instead)
    problem        VARCHAR,           -- why it was quarantined
    detail         VARCHAR,
    csv_path       VARCHAR,           -- while staging: where the CSV was read from (a temporary copy for zips)
    staged_path    VARCHAR,           -- its Parquet in the cache (loaded files)
    sha256         VARCHAR,           -- of the file's bytes: the cache's key
    rows_read      BIGINT,            -- rows parsed, before invalid rows and repeated keys were left out
    rows_staged    BIGINT,            -- rows in its Parquet
    first_ts       TIMESTAMP,         -- the staged rows' time range: files of one series whose ranges
    last_ts        TIMESTAMP,         -- meet are deduplicated against each other (sql/staging/staging.sql)
    overlapping    BOOLEAN,           -- its range meets another loaded file's of its series (set in sql/staging/staging.sql)
    inside_window  BOOLEAN            -- all its rows lie inside --start/--end (set in sql/staging/staging.sql)
);

-- What staging found wrong in each file (unparseable rows, invalid values, keys repeated within the
-- file), in data_quality's shape; computed once per file and kept in the cache beside its Parquet.
CREATE TABLE stage_quality (
    file_id        INTEGER,
    symbol         VARCHAR,
    data_type      VARCHAR,
    kline_interval VARCHAR,
    line           BIGINT,
    problem        VARCHAR,
    severity       VARCHAR,
    detail         VARCHAR,
    rows_affected  BIGINT,
    first_ts       TIMESTAMP,
    last_ts        TIMESTAMP
);

CREATE TABLE src_rejects (            -- rows DuckDB could not parse, from its reject_errors table
    file_id       INTEGER,
    line          BIGINT,             -- 1-based line in the CSV, header included
    column_name   VARCHAR,
    error_type    VARCHAR,
    csv_line      VARCHAR,
    error_message VARCHAR
);

CREATE TABLE src_metrics (
    create_time                      TIMESTAMP,  -- text 'YYYY-MM-DD HH:MM:SS', UTC
    symbol                           VARCHAR,
    sum_open_interest                DOUBLE,     -- coins
    sum_open_interest_value          DOUBLE,     -- USDT
    count_toptrader_long_short_ratio DOUBLE,
    sum_toptrader_long_short_ratio   DOUBLE,
    count_long_short_ratio           DOUBLE,     -- accounts long / accounts short
    sum_taker_long_short_vol_ratio   DOUBLE,     -- taker buy volume / taker sell volume
    file_id                          INTEGER
);

CREATE TABLE src_funding_rate (
    calc_time              BIGINT,   -- epoch ms
    funding_interval_hours INTEGER,
    last_funding_rate      DOUBLE,
    file_id                INTEGER
);

CREATE TABLE src_klines (             -- klines and markPriceKlines / indexPriceKlines / premiumIndexKlines
    open_time              BIGINT,   -- epoch ms (µs in spot files from 2025)
    open                   DOUBLE,
    high                   DOUBLE,
    low                    DOUBLE,
    close                  DOUBLE,
    volume                 DOUBLE,   -- base asset; ignored (0) in the price-index kline types
    close_time             BIGINT,
    quote_volume           DOUBLE,
    count                  BIGINT,
    taker_buy_volume       DOUBLE,
    taker_buy_quote_volume DOUBLE,
    ignore                 VARCHAR,
    file_id                INTEGER
);

CREATE TABLE src_agg_trades (
    agg_trade_id   BIGINT,
    price          DOUBLE,
    quantity       DOUBLE,
    first_trade_id BIGINT,
    last_trade_id  BIGINT,
    transact_time  BIGINT,   -- epoch ms
    is_buyer_maker BOOLEAN,  -- true: the seller was the taker
    file_id        INTEGER,
    file_last_ts   TIMESTAMP -- in a build, its file's last time (src_files.last_ts): a filter on it skips whole files
);

CREATE TABLE src_trades (
    id             BIGINT,
    price          DOUBLE,
    qty            DOUBLE,
    quote_qty      DOUBLE,
    time           BIGINT,   -- epoch ms
    is_buyer_maker BOOLEAN,
    file_id        INTEGER,
    file_last_ts   TIMESTAMP -- as in src_agg_trades
);

CREATE TABLE src_liquidation_snapshot (
    time                      BIGINT,   -- epoch ms
    side                      VARCHAR,  -- SELL: a long was liquidated; BUY: a short
    order_type                VARCHAR,
    time_in_force             VARCHAR,
    original_quantity         DOUBLE,
    price                     DOUBLE,
    average_price             DOUBLE,
    order_status              VARCHAR,
    last_fill_quantity        DOUBLE,
    accumulated_fill_quantity DOUBLE,
    file_id                   INTEGER
);

-- Realized liquidations recorded from Binance's forceOrder websocket stream (any symbols; SELL = a long
-- was liquidated). Read as text, by header name: staging types them and flags what does not parse.
CREATE TABLE src_force_orders (
    "timestamp" VARCHAR,  -- ISO-8601 or epoch ms
    symbol      VARCHAR,
    side        VARCHAR,
    avg_price   VARCHAR,
    filled_qty  VARCHAR,
    usd_value   VARCHAR,
    file_id     INTEGER
);

-- Realized liquidations aggregated per period, as dashboards export them: one row per period.
CREATE TABLE src_liquidations_aggregated (
    "time"    VARCHAR,  -- period start, ISO-8601 or epoch ms
    long_usd  VARCHAR,  -- longs liquidated in the period, USDT
    short_usd VARCHAR,
    symbol    VARCHAR,  -- optional: without it, the file belongs to the only symbol built
    file_id   INTEGER
);

-- The gaps of a forceOrder recording (`build.py record` writes forceOrder-gaps.csv beside its daily files): the
-- times the stream was not received, when nothing was recorded, and why. Read as text, by header name.
CREATE TABLE src_recording_gaps (
    from_ts  VARCHAR,  -- ISO-8601, UTC
    to_ts    VARCHAR,
    reason   VARCHAR,  -- e.g. "connection dropped: ...", "recorder not running"
    file_id  INTEGER
);

-- The time window asked for with --start/--end (NULL: no bound). build.py fills one row.
CREATE TABLE build_window (start_ts TIMESTAMP, end_ts TIMESTAMP);

-- Model parameters given on the command line (--param NAME=VALUE; a whole file: --parameters FILE); see parameters/parameters.sql.
CREATE TABLE parameter_overrides (name VARCHAR PRIMARY KEY, value DOUBLE NOT NULL);

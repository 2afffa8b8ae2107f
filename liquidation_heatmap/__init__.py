"""Liquidation Heatmap: Binance USD-M futures files -> DuckDB SQL models -> SQLite -> Datasette.

One job per module: cli (the command line), options (what a command is asked), files (Binance's file names and
layouts), fetch (data.binance.vision), stage (files -> Parquet), pipeline (the build: the SQL in order),
incremental (what a new build can keep), export (DuckDB -> SQLite), answers (the stored answers), report (the
backtest as tables), serve (Datasette), simulate (the demo market), fanout (build --symbols: a build per symbol as
Dask tasks), merge (the symbols' databases as one). The logic lives in sql/."""

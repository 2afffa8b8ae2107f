"""How fresh the data is, said on the index and on every chart page (templates/index.html, templates/_chart_page.html):
the newest time of each input the build read (its data_coverage table) and when the database was built (build_info),
in one line, e.g. "Data up to 7 Dec 2026 14:35 UTC (klines), 14:35 (mark price), 14:30 (open interest), ...; built
14:37 UTC". A time's date is written only where it differs from the one before. It is the build's the request reads
(plugins/fresh_database.py), so a page says which build it shows."""

import datetime as dt

from datasette import hookimpl

# data_coverage's data types, in the order said, as a reader names them (the three sources of realized liquidations
# are one input)
INPUTS = {"klines": "klines", "markPriceKlines": "mark price", "metrics": "open interest", "fundingRate": "funding",
          "aggTrades": "trades", "trades": "trades", "liquidationSnapshot": "realized liquidations",
          "forceOrder": "realized liquidations", "liquidationsAggregated": "realized liquidations"}
# the newest time of each data type, for one symbol or all ('': every symbol's newest); of the kline types, the
# interval the models use (each type's finest)
NEWEST = """SELECT data_type, max(last_ts) AS last_ts FROM data_coverage
WHERE (:symbol = '' OR symbol = :symbol) AND last_ts IS NOT NULL AND (kline_interval IS NULL OR used_by_models)
GROUP BY data_type"""
BUILT = "SELECT value FROM build_info WHERE key = 'built_at'"


def said_times(times: list[str]) -> list[str]:
    """ISO-8601 UTC times -> ['7 Dec 2026 14:35', '14:30', ...]: the date only where it differs from the time before."""
    said, day = [], None
    for ts in times:
        t = dt.datetime.fromisoformat(ts)
        said.append(f"{t:%H:%M}" if t.date() == day else f"{t.day} {t:%b %Y %H:%M}")
        day = t.date()
    return said


async def freshness(db, symbol: str = "") -> str:
    """The line for database `db`, of `symbol` ('': every symbol's newest); '' for a database without coverage."""
    if not (await db.table_exists("data_coverage") and await db.table_exists("build_info")):
        return ""
    newest = {}
    for data_type, last_ts in (await db.execute(NEWEST, {"symbol": symbol})).rows:
        what = INPUTS.get(data_type, data_type)
        newest[what] = max(newest.get(what, ""), last_ts)
    order = list(INPUTS.values())
    inputs = sorted(newest.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    built = (await db.execute(BUILT)).first()
    said = said_times([ts for _, ts in inputs] + ([built[0]] if built else []))
    parts = [f"{when}{' UTC' if i == 0 else ''} ({what})" for i, ((what, _), when) in enumerate(zip(inputs, said))]
    line = (f"{symbol} data" if symbol else "Data") + " up to " + ", ".join(parts) if parts else "No data yet"
    return line + (f"; built {said[-1]} UTC." if built else ".")


@hookimpl
def extra_template_vars(datasette):
    async def data_freshness(symbol: str = "") -> str:
        """The freshness line of the pages' database (the one datasette.yaml gives the stored queries of), for
        `symbol` ('' for every symbol's newest)."""
        name = next(iter((datasette.config or {}).get("databases") or {}), None)
        db = datasette.databases.get(name) if name else None
        return await freshness(db, symbol or "") if db is not None else ""
    return {"data_freshness": data_freshness}

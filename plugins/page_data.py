"""Template functions for the chart pages (templates/pages/): which fitted parameters stand behind what a page shows
(calibration_note), and a small stored query's rows for what a page shows as a table (stored_query_rows). That the
data is simulated is said on every page by plugins/data_source.py. A chart's own rows are fetched by the page from
the stored query's JSON, once per view."""

import datetime as dt
import re

from datasette import hookimpl
from markupsafe import Markup

TIME_NAMES = ("at", "start", "end")
# The page's times as the stored queries read them (a bad one: NULL)
TIMES = "SELECT " + ", ".join(f"strftime('%Y-%m-%dT%H:%M:%SZ', nullif(:{name}, ''))" for name in TIME_NAMES)
# The time a page shows, picked as its stored query picks it (datasette.yaml), for the model and symbol shown: a map
# and the comparison are taken at the last as_of (a time bucket's end) at or before `at`; the heatmap's and the
# backtest's range ends at their last row at or before `end`. Empty: the latest.
AS_OF = "SELECT max(as_of) FROM {} AND as_of <= coalesce(:at, '9')"
LAST_ROW = "SELECT max(ts) FROM {} AND ts <= coalesce(:end, '9')"
SHOWN_TIME = {
    "heatmap": LAST_ROW.format("heatmap_rows WHERE model = :model AND symbol = :symbol"),
    "levels": AS_OF.format("map_levels WHERE model = :model AND symbol = :symbol"),
    "compare_models": AS_OF.format("models_compared WHERE symbol = :symbol"),
    "predicted_vs_realized": LAST_ROW.format("backtest_series WHERE symbol = :symbol"),
}
# The start of a range shown (exclusive), as the heatmap and backtest queries take it: `start`, else `last` hours
# back from its end, else everything ('0').
RANGE_START = """SELECT coalesce(:start, strftime('%Y-%m-%dT%H:%M:%SZ', coalesce(:end, :t), '-' || :last_hours || ' hours',
                                                  '+1 seconds'), '0')"""
RANGED = ("heatmap", "predicted_vs_realized")
SYMBOL = "SELECT coalesce(nullif(:symbol, ''), (SELECT symbol FROM query_defaults))"

# The ensemble's fit in force at time :t (applies_to empty: in force after the data), one row per parameter,
# with the days it was trained on; the leverage tiers in order of leverage.
ENSEMBLE_FIT = """
SELECT fit_id, applies_from, applies_to, date(train_from) AS first_day, date(train_to, '-1 seconds') AS last_day,
       parameter, value
FROM fitted_parameters
WHERE symbol = :symbol AND fit_id IS NOT NULL AND applies_from <= :t AND (applies_to IS NULL OR :t < applies_to)
ORDER BY parameter NOT LIKE 'weight_%', CAST(substr(parameter, length('leverage_share_') + 1) AS INTEGER), parameter"""
# Per fitted model (the ensemble's fits have a fit_id, the forecast's none): its first refit, and the refits that
# took over within the range shown, (:start, :t].
REFITS = """
SELECT CASE WHEN fit_id IS NULL THEN 'forecast' ELSE 'ensemble' END AS model, min(applies_from) AS first_from,
       count(DISTINCT applies_from) FILTER (WHERE applies_from > :start AND applies_from <= :t) AS in_range
FROM fitted_parameters WHERE symbol = :symbol GROUP BY 1"""
FIXED_MODELS = "SELECT DISTINCT model FROM models_compared WHERE symbol = :symbol AND model <> 'ensemble' ORDER BY model"


def when(ts: str) -> str:
    """2024-09-15T00:00:00Z -> '15 Sep 2024 00:00 UTC'."""
    t = dt.datetime.fromisoformat(ts)
    return f"{t.day} {t:%b %Y %H:%M} UTC"


def days(first: str, last: str) -> str:
    """Two days as a reader writes them: '8-14 Sep 2024', '28 Aug - 3 Sep 2024', '1 Sep 2024'."""
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    if a == b:
        return f"{b.day} {b:%b %Y}"
    if (a.year, a.month) == (b.year, b.month):
        return f"{a.day}-{b.day} {b:%b %Y}"
    return f"{a.day} {a:%b}{' ' + str(a.year) if a.year != b.year else ''} - {b.day} {b:%b %Y}"


def percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def fit_in_words(rows: list, fitted_parameters_url: str, subject: Markup) -> Markup:
    """One fit of the ensemble (ENSEMBLE_FIT's rows) as a trader reads it; each parameter is described in
    metadata.yml (fitted_parameters.parameter) and sql/calibration/."""
    fit, value = rows[0], {r["parameter"]: r["value"] for r in rows}
    weights = ", ".join(f"{r['parameter'].removeprefix('weight_')} {percent(r['value'])}"
                        for r in rows if r["parameter"].startswith("weight_"))
    mix = ", ".join(f"{r['parameter'].removeprefix('leverage_share_')} {percent(r['value'])}"
                    for r in rows if r["parameter"].startswith("leverage_share_"))
    until = f"to {when(fit['applies_to'])}" if fit["applies_to"] else "on, after the data"
    parts = [f"model weights {weights}" if weights else "", f"leverage mix {mix}" if mix else ""]
    if "levered_side_ratio" in value:
        parts.append(f"the side a model calls levered liquidates x{value['levered_side_ratio']:.2f} as much as the other")
    if "stop_loss_share" in value:
        parts.append(f"stop-losses close {percent(value['stop_loss_share'])} of a level crossed slowly")
    if "volume_scale" in value:
        parts.append(f"volumes x{value['volume_scale']:.3g} to match the realized")
    return Markup("{subject} fitted to the realized liquidations of {days} (walk-forward: in force from {start} "
                  "{until}): {parts} (<a href=\"{url}\">fit {fit_id}</a>).").format(
        subject=subject, days=days(fit["first_day"], fit["last_day"]), start=when(fit["applies_from"]), until=until,
        parts="; ".join(p for p in parts if p), url=f"{fitted_parameters_url}?fit_id={fit['fit_id']}",
        fit_id=fit["fit_id"])


async def ensemble_note(db, url: str, symbol: str, t: str, refits: dict, subject: Markup) -> Markup:
    """What the ensemble ran with at time t: the fit in force then, or the defaults (and why)."""
    if "ensemble" not in refits:
        return Markup("{subject}: its default weights (model_parameters); nothing in this build is fitted to "
                      "realized liquidations.").format(subject=subject)
    rows = (await db.execute(ENSEMBLE_FIT, {"symbol": symbol, "t": t})).rows
    if not rows:
        return Markup("{subject}: its default weights (model_parameters): no fit yet at {t}, the first applies from "
                      "{first}.").format(subject=subject, t=when(t), first=when(refits["ensemble"]["first_from"]))
    return fit_in_words(rows, url, subject)


async def shown(datasette, db, query: str, args, model: str, symbol: str) -> tuple[str, str] | None:
    """The range (start, t] a page shows, t alone for one instant (start = t); None where the page draws nothing
    (a time that is no time, or outside the data: its chart says so, from the stored query's 400)."""
    given = {name: args.get(name, "") for name in TIME_NAMES}
    times = dict(zip(TIME_NAMES, (await db.execute(TIMES, given)).rows[0], strict=True))
    if any(given[name] and times[name] is None for name in TIME_NAMES):
        return None
    covered = (datasette.plugin_config("liquidation_ranges") or {}).get(query)   # as plugins/liquidation_params.py
    if covered and any(times.values()):
        first, last = (await db.execute(covered, {"symbol": args.get("symbol", "")})).first()
        if first and ((times["at"] or first) < first or (times["at"] or last) > last
                      or (times["end"] or last) < first or (times["start"] or "") >= last):
            return None
    t = (await db.execute(SHOWN_TIME[query], {"model": model, "symbol": symbol, **times})).rows[0][0]
    if t is None:
        return None
    if query not in RANGED:
        return t, t
    last = args.get("last", "")
    last_hours = int(last[:-1]) * {"h": 1, "d": 24}[last[-1]] if re.fullmatch(r"\d+[hd]", last) else None
    return (await db.execute(RANGE_START, {**times, "t": t, "last_hours": last_hours})).rows[0][0], t


def database(datasette) -> str:
    """The database the pages read: the one datasette.yaml gives the stored queries of."""
    return next(iter(datasette.config["databases"]))


def listed(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


@hookimpl
def extra_template_vars(datasette):
    async def calibration_note(query: str, args, model: str) -> Markup:
        """What is fitted behind the page of stored query `query`, for the model shown (`model`; empty: every model,
        as the comparison and the backtest show) at the time shown (args' at, or the end of its range): the fit in
        force then, in words, or that the model's parameters are fixed. Empty where the page draws nothing."""
        db = datasette.databases.get(database(datasette))
        if db is None or query not in SHOWN_TIME or not await db.table_exists("fitted_parameters"):
            return Markup("")
        symbol = (await db.execute(SYMBOL, {"symbol": args.get("symbol", "")})).rows[0][0]
        if (span := await shown(datasette, db, query, args, model, symbol)) is None:
            return Markup("")
        if model and model != "ensemble":
            return Markup("{model} uses fixed parameters (model_parameters): nothing in it is fitted to realized "
                          "liquidations.").format(model=model)
        (start, t), ranged = span, query in RANGED
        refits = {r["model"]: r for r in (await db.execute(REFITS, {"symbol": symbol, "start": start, "t": t})).rows}
        subject = Markup("Ensemble at the end of this range ({t}),").format(t=when(t)) if ranged else Markup("Ensemble")
        note = await ensemble_note(db, datasette.urls.table(db.name, "fitted_parameters"), symbol, t, refits, subject)
        if ranged and "ensemble" in refits:
            note += Markup(" Refitted every day: {n} times within this range.").format(n=refits["ensemble"]["in_range"])
        if model:
            return note
        if "forecast" in refits:
            note += Markup(" The forecast's regressions are refitted every day on every earlier window{within}.").format(
                within=f", {refits['forecast']['in_range']} times within this range" if ranged else "")
        if fixed := [r["model"] for r in (await db.execute(FIXED_MODELS, {"symbol": symbol})).rows]:
            note += Markup(" {models} use fixed parameters.").format(models=listed(fixed))
        return note

    async def stored_query_rows(name: str, **values) -> list[dict]:
        """The rows of stored query `name` (datasette.yaml) with these parameters, the others empty."""
        query = datasette.config["databases"][database(datasette)]["queries"][name]
        params = {param: str(values.get(param, "")) for param in query["params"]}
        return [dict(row) for row in (await datasette.get_database(database(datasette)).execute(query["sql"], params)).rows]
    return {"calibration_note": calibration_note, "stored_query_rows": stored_query_rows}

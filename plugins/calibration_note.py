"""Tell every chart page whether the ensemble's parameters were fitted to realized liquidations or are
the defaults (sql/45_calibration.sql): a template variable, calibration_note."""

from datasette import hookimpl

LATEST_FIT = """SELECT symbol, applies_from, train_from, train_to,
       group_concat(parameter || ' ' || printf('%.3g', value), ', ') AS fitted
FROM fitted_parameters WHERE applies_to IS NULL AND parameter NOT LIKE 'leverage_share%'
GROUP BY symbol, applies_from, train_from, train_to ORDER BY symbol"""


@hookimpl
def extra_template_vars(datasette, database):
    async def calibration_note():
        db = datasette.databases.get(database or "liquidations")
        if db is None or not await db.table_exists("fitted_parameters"):
            return ""
        rows = (await db.execute(LATEST_FIT)).rows
        if not rows:
            return ("Parameters: the defaults (model_parameters). No realized liquidations were given, so nothing "
                    "was fitted; give them to the build to fit the ensemble walk-forward.")
        return "Ensemble fitted walk-forward to realized liquidations (fitted_parameters). " + "; ".join(
            f"{r['symbol']}: trained {r['train_from'][:10]} to {r['train_to'][:10]}, in force from "
            f"{r['applies_from'][:10]}: {r['fitted']}" for r in rows) + "."
    return {"calibration_note": calibration_note}

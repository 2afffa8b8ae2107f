"""Template functions for the chart pages (templates/pages/): whether the ensemble was fitted
(calibration_note), whether the data is the demo's simulation (simulated_note), and a small stored query's rows for what a page shows as a table (stored_query_rows).
A chart's own rows are fetched by the page from the stored query's JSON, once per view."""

from datasette import hookimpl

LATEST_FIT = """SELECT symbol, applies_from, train_from, train_to,
       group_concat(parameter || ' ' || printf('%.3g', value), ', ') AS fitted
FROM fitted_parameters WHERE applies_to IS NULL AND parameter NOT LIKE 'leverage_share%'
GROUP BY symbol, applies_from, train_from, train_to ORDER BY symbol"""
DATABASE = "liquidations"


@hookimpl
def extra_template_vars(datasette):
    async def calibration_note():
        db = datasette.databases.get(DATABASE)
        if db is None or not await db.table_exists("fitted_parameters"):
            return ""
        rows = (await db.execute(LATEST_FIT)).rows
        if not rows:
            return ("Parameters: the defaults (model_parameters). No realized liquidations were given, so nothing "
                    "was fitted; give them to the build to fit the ensemble walk-forward.")
        return "Ensemble fitted walk-forward to realized liquidations (fitted_parameters). " + "; ".join(
            f"{r['symbol']}: trained {r['train_from'][:10]} to {r['train_to'][:10]}, in force from "
            f"{r['applies_from'][:10]}: {r['fitted']}" for r in rows) + "."

    async def simulated_note():
        db = datasette.databases.get(DATABASE)
        if db is None or not await db.table_exists("build_info"):
            return ""
        rows = (await db.execute("SELECT value FROM build_info WHERE key = 'input_data'")).rows
        return ("Built from simulated files (build.py demo), a test bench for the models, not the market."
                if rows and rows[0][0].startswith("simulated") else "")

    async def stored_query_rows(name: str, **values) -> list[dict]:
        """The rows of stored query `name` (datasette.yaml) with these parameters, the others empty."""
        query = datasette.config["databases"][DATABASE]["queries"][name]
        params = {param: str(values.get(param, "")) for param in query["params"]}
        return [dict(row) for row in (await datasette.get_database(DATABASE).execute(query["sql"], params)).rows]
    return {"calibration_note": calibration_note, "simulated_note": simulated_note, "stored_query_rows": stored_query_rows}

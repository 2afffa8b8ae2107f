"""Template functions for the chart pages' controls and links: the database they read (the one datasette.yaml
gives the stored queries of), the values a parameter may take in this build (the parameter check's own, so a
control offers nothing the query would refuse), and the value an empty parameter stands for (the build's table
query_defaults, which the stored queries' SQL falls back to)."""

from datasette import hookimpl
from datasette.plugins import pm

DEFAULTS = ("symbol", "model", "horizon")   # query_defaults' columns


@hookimpl
def extra_template_vars(datasette):
    database = next(iter((datasette.config or {}).get("databases") or {}), None)

    async def allowed(name: str, query: str = "") -> list[str]:
        """The values parameter `name` (of `query`, where a rule is the query's own) may take in this build."""
        check = pm.get_plugin("liquidation_params.py")   # (Datasette registers each file of plugins/ by its name)
        return await check.allowed_values(datasette, database, query, name) or []

    async def default_value(name: str) -> str:
        """The value an empty parameter stands for, or '' where the query's default is not one of its values."""
        if name not in DEFAULTS or database is None:
            return ""
        row = (await datasette.get_database(database).execute(f"SELECT {name} FROM query_defaults")).first()
        return str(row[0]) if row and row[0] is not None else ""
    return {"database_name": database, "allowed": allowed, "default_value": default_value}

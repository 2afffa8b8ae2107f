"""Template functions for the chart pages' controls and links: the database they read (the one datasette.yaml
gives the stored queries of), the values a parameter may take in this build (the parameter check's own, so a
control offers nothing the query would refuse), and the value an empty parameter stands for (datasette.yaml,
plugins.liquidation_defaults: what the stored queries' SQL falls back to)."""

from datasette import hookimpl
from datasette.plugins import pm


@hookimpl
def extra_template_vars(datasette):
    database = next(iter((datasette.config or {}).get("databases") or {}), None)

    async def allowed(name: str, query: str = "") -> list[str]:
        """The values parameter `name` (of `query`, where a rule is the query's own) may take in this build."""
        check = pm.get_plugin("liquidation_params.py")   # (Datasette registers each file of plugins/ by its name)
        return await check.allowed_values(datasette, database, query, name) or []

    def default_value(name: str) -> str:
        """The value an empty parameter stands for, or '' where the query's default is not one of its values."""
        return str((datasette.plugin_config("liquidation_defaults") or {}).get(name, ""))
    return {"database_name": database, "allowed": allowed, "default_value": default_value}

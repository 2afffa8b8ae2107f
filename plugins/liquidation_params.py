"""Check stored-query parameters before a query runs: a bad value gets a 400 that names it.

SQLite cannot raise an error with a message of ours, so the check sits in front of Datasette:
datasette.yaml's plugins.liquidation_params maps each parameter to a format ('time') or
to SQL listing its allowed values; a key 'query.parameter' overrides it for one query. An empty value
is always allowed (the query's default). The chart pages' controls offer the same values (allowed_values, through
plugins/page_controls.py)."""

import csv
import datetime as dt
import io
import json
import re

from datasette.utils.asgi import Request, Response


def utc_time(value: str) -> bool:
    """An ISO-8601 UTC date or time that exists: the pattern, then a real date parser (2024-02-30, 2024-13-45
    and 25:00 match the pattern, and SQLite's strftime turns them into NULL, which the queries read as empty)."""
    if not re.match(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?Z?)?$", value):
        return False
    try:
        dt.datetime.fromisoformat(value.removesuffix("Z"))
    except ValueError:
        return False
    return True


FORMATS = {"time": (utc_time, "an ISO-8601 UTC date or time that exists, e.g. 2024-09-01 or 2024-09-01T12:00:00Z")}
QUERY_PATH = re.compile(r"^/(?P<database>[^/]+)/(?P<query>[^/.]+)(\.(?P<format>json|csv))?$")


def natural(value: str) -> list:
    """Sort key that puts 4h before 24h and 5 before 10: digits compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", value))]


def rule_for(datasette, query: str, name: str) -> str | None:
    rules = datasette.plugin_config("liquidation_params") or {}
    return rules.get(f"{query}.{name}", rules.get(name))


async def allowed_values(datasette, database: str, query: str, name: str) -> list[str] | None:
    """The values parameter `name` of `query` may take (from the SQL its rule names), or None (a format, or no rule)."""
    rule = rule_for(datasette, query, name)
    if rule is None or rule in FORMATS:
        return None
    values = [str(row[0]) for row in (await datasette.get_database(database).execute(rule)).rows]
    return values if " order by " in rule.lower() else sorted(values, key=natural)   # the rule's order, if it has one


async def problem_with(datasette, request: Request) -> str | None:
    match = QUERY_PATH.match(request.path)
    queries = (datasette.config or {}).get("databases", {}).get(match["database"] if match else "", {})
    query = queries.get("queries", {}).get(match["query"]) if match else None
    if query is None or match["database"] not in datasette.databases:
        return None
    for name in query.get("params", []):
        value, rule = request.args.get(name, ""), rule_for(datasette, match["query"], name)
        if not value or rule is None:
            continue
        if rule in FORMATS:
            valid, expected = FORMATS[rule]
            if valid(value):
                continue
        else:
            allowed = await allowed_values(datasette, match["database"], match["query"], name)
            if value in allowed:
                continue
            expected = "one of " + ", ".join(allowed) if allowed else "nothing: this build has none"
        return f"{match['query']}: {name}={value!r} is not valid; expected {expected}"
    return await outside_range(datasette, match["database"], match["query"], query["params"], request.args)


def instant(value: str) -> str:
    """A valid time parameter as the tables write times: 2024-09-01 -> 2024-09-01T00:00:00Z."""
    return dt.datetime.fromisoformat(value.removesuffix("Z")).strftime("%Y-%m-%dT%H:%M:%SZ")


async def outside_range(datasette, database: str, query: str, params: list[str], args) -> str | None:
    """Times that can only give an empty (or silently different) answer: start after end, and a time outside the
    range the build covers for the symbol asked (plugins.liquidation_ranges: the query's first and last instant).
    Said as a 400 with the range, where the query would answer [] or the nearest instant without a word."""
    times = {name: instant(args[name]) for name in ("start", "end", "at") if name in params and args.get(name)}
    if "start" in times and "end" in times and times["start"] > times["end"]:
        return f"{query}: start={args['start']!r} is after end={args['end']!r}"
    sql = (datasette.plugin_config("liquidation_ranges") or {}).get(query)
    if not times or sql is None:
        return None
    first, last = (await datasette.get_database(database).execute(sql, {"symbol": args.get("symbol", "")})).first()
    if first is None:
        return None
    covered = f"this build covers {first[:16].replace('T', ' ')} to {last[:16].replace('T', ' ')} UTC"
    for name, bad in (("start", times.get("start", "") >= last), ("end", times.get("end", "9") < first),
                      ("at", not first <= times.get("at", first) <= last)):
        if bad:
            return f"{query}: {name}={args[name]!r} is outside the data: {covered}"
    return None


def wrap(datasette, app):
    """`app` behind the check (plugins/asgi_stack.py places it: innermost, right in front of Datasette)."""
    async def checked(scope, receive, send):
        if scope["type"] == "http" and (problem := await problem_with(datasette, Request(scope, receive))):
            if scope["path"].endswith(".json"):
                body = {"ok": False, "error": problem, "status": 400, "title": "Invalid parameter"}
                response = Response(json.dumps(body), status=400, content_type="application/json")
            elif scope["path"].endswith(".csv"):   # in the format asked for: a CSV reader sees the message
                body = io.StringIO()
                csv.writer(body).writerows([["error", "status"], [problem, 400]])
                response = Response(body.getvalue(), status=400, content_type="text/csv; charset=utf-8")
            else:
                html = await datasette.render_template(
                    "error.html", {"ok": False, "error": problem, "status": 400, "title": "Invalid parameter"})
                response = Response.html(html, status=400)
            return await response.asgi_send(send)
        await app(scope, receive, send)
    return checked

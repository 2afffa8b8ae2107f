"""A database built from simulated files (`build.py demo`: its build_info says input_data 'simulated: ...') says so
everywhere, since its dates and prices look like the market's: on every HTML page (templates/base.html shows
`data_simulated()` at the top), as the instance's, database's and tables' source in Datasette's metadata (the index,
the database and table pages, the footers), in an `x-data-source` header on every answer, and as a "data_source"
key first in every JSON object a simulated database answers. A build of real files changes nothing here.

build_info is read once for each build: `build.py serve` serves the file immutable, and a newer build put in its
place (plugins/fresh_database.py) is another Database object, read when a request first reads it."""

import weakref

from datasette import hookimpl

SIMULATED = "Simulated by build.py demo (not market data), in the format of Binance public data (data.binance.vision)"
# metadata.yml's attribution, as it reads for a simulated build (no link: there is no source to link to)
SIMULATED_ATTRIBUTION = {"source": SIMULATED, "source_url": "", "license": "MIT (code and simulated data)",
                         "license_url": ""}
BANNER = ("Simulated data: every number on this site comes from files simulated by build.py demo, a test bench for "
          "the models. The dates and prices look real; they are not the market's.")
HEADER = b"x-data-source"

_simulated = weakref.WeakKeyDictionary()   # Database (one build) -> whether it was built from simulated files


async def simulated_databases(datasette) -> set[str]:
    """The names of the databases the running request reads that were built from simulated files; a build read for
    the first time that was is attributed so in Datasette's metadata."""
    names = set()
    for name, db in datasette.databases.items():
        if db not in _simulated:
            rows = (await db.execute("SELECT value FROM build_info WHERE key = 'input_data'")).rows if (
                await db.table_exists("build_info")) else []
            _simulated[db] = bool(rows and str(rows[0][0]).startswith("simulated"))
            if _simulated[db]:
                await attribute(datasette, name)
        if _simulated[db]:
            names.add(name)
    return names


async def attribute(datasette, name: str) -> None:
    """Datasette's metadata of database `name`, its tables and the instance: simulated, no source to link to."""
    for key, value in SIMULATED_ATTRIBUTION.items():
        await datasette.set_database_metadata(name, key, value)
    for table in await datasette.databases[name].table_names():
        described = await datasette.get_resource_metadata(name, table)
        for key, value in SIMULATED_ATTRIBUTION.items():
            if key in described:
                await datasette.set_resource_metadata(name, table, key, value)
    for key, value in SIMULATED_ATTRIBUTION.items():
        await datasette.set_instance_metadata(key, value)


@hookimpl
def startup(datasette):
    async def flag():
        # (after Datasette has loaded metadata.yml into its internal database: these entries replace its own)
        await simulated_databases(datasette)
    return flag


# Template globals, not extra_template_vars: Datasette renders its own error pages (404, bad SQL) without the
# plugins' template variables, and they show the banner too.
@hookimpl
def prepare_jinja2_environment(env, datasette):
    env.globals["data_simulated"] = lambda: BANNER if any(_simulated.get(db) for db in datasette.databases.values()) \
        else ""
    # the chart pages' own note (templates/_chart_page.html): the banner of every page says it now
    env.globals["simulated_note"] = lambda: ""


def with_source(body: bytes) -> bytes:
    """A JSON object's text with "data_source" as its first key; any other JSON (an array) as it is."""
    text = body.lstrip()
    if not text.startswith(b"{"):
        return body
    rest = text[1:].lstrip()
    key = b'"data_source": "' + SIMULATED.encode() + b'"'
    return b"{" + key + (b"" if rest.startswith(b"}") else b", ") + text[1:]


def wrap(datasette, app):
    """Every answer of `app` marked (plugins/asgi_stack.py places it: inside compression, which then compresses the
    marked body, and outside the parameter check, whose 400s are marked too)."""
    async def answer(scope, receive, send):
        if scope["type"] != "http" or not (names := await simulated_databases(datasette)):
            return await app(scope, receive, send)
        database = scope["path"].split("/")[1].split(".")[0]
        held = []   # a JSON answer's start, until its body is rewritten (its length changes)

        async def send_marked(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (HEADER, SIMULATED.encode())]
                json = any(name.lower() == b"content-type" and value.startswith(b"application/json")
                           for name, value in headers)
                if json and database in names:
                    return held.append({**message, "headers": headers})
                return await send({**message, "headers": headers})
            if held and message["type"] == "http.response.body":
                start, body = held.pop(), message.get("body", b"")
                new = with_source(body)
                start["headers"] = [(name, str(int(value) + len(new) - len(body)).encode())
                                    if name.lower() == b"content-length" else (name, value)
                                    for name, value in start["headers"]]
                await send(start)
                return await send({**message, "body": new})
            await send(message)
        await app(scope, receive, send_marked)
    return answer

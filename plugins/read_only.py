"""Read-only: a request other than GET, HEAD or OPTIONS to an immutable database is refused, 405, as a static file
server would, before Datasette sees it. Datasette refuses each write itself (403), all but one: a POST to
/{db}/-/query is a 500 in 1.0a41 (its view looks for a table in the URL). Where this sits among the other layers:
plugins/asgi_stack.py."""

from datasette.utils.asgi import Response

READ_ONLY = Response.json({"ok": False, "error": "This database is served read-only", "status": 405}, status=405,
                          headers={"Allow": "GET, HEAD, OPTIONS"})


def immutable(datasette, scope) -> bool:
    """Whether the request's path is under a database served immutable, or is the index or a page of templates/
    pages/ (which read only the databases) while every database is served immutable."""
    first = scope["path"].split("/")[1]
    database = first.split(".")[0]
    if database in datasette.databases:
        return not datasette.databases[database].is_mutable
    return first != "-" and not any(db.is_mutable for db in datasette.databases.values())


def wrap(datasette, app):
    async def refuse_writes(scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS") and immutable(datasette, scope):
            return await READ_ONLY.asgi_send(send)
        return await app(scope, receive, send)
    return refuse_writes

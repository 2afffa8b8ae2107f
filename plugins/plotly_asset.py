"""Plotly: the partial bundle in plugins/plotly/ (1.2 MB, never a CDN), compressed once per process, at level 9,
and served from memory under a URL named by its content, which browsers may cache for good. The chart pages name
it as `plotly_url`. The compression starts with the server, in a thread it does not wait for: a start (and the
build, which starts a Datasette to render the stored answers) is not held up by it."""

import asyncio
import functools
import gzip
import hashlib
import threading
from pathlib import Path

from datasette import hookimpl
from datasette.utils.asgi import Response

PLOTLY_JS = Path(__file__).parent / "plotly" / "plotly-liquidation.min.js"
RAW = PLOTLY_JS.read_bytes()
PLOTLY_URL = f"/assets/plotly-{hashlib.sha256(RAW).hexdigest()[:12]}.min.js"


@functools.cache
def compressed() -> bytes:
    return gzip.compress(RAW, 9, mtime=0)


@hookimpl
def startup(datasette):
    threading.Thread(target=compressed, daemon=True).start()


async def plotly_js(request):
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    # (lower case, as ASGI has them: asgi-gzip then sees the body is compressed already)
    headers = {"cache-control": "public, max-age=31536000, immutable", "vary": "Accept-Encoding",
               **({"content-encoding": "gzip"} if gzipped else {})}
    return Response(await asyncio.to_thread(compressed) if gzipped else RAW, headers=headers,
                    content_type="application/javascript; charset=utf-8")


@hookimpl
def register_routes():
    return [(PLOTLY_URL.replace(".", r"\."), plotly_js)]


@hookimpl
def extra_template_vars():
    return {"plotly_url": PLOTLY_URL}

"""Plotly: the partial bundle in plugins/plotly/ (1.2 MB, never a CDN), compressed once, at level 9, when the
server starts, and served from memory under a URL named by its content, which browsers may cache for good. The
chart pages name it as `plotly_url`."""

import asyncio
import gzip
import hashlib
from pathlib import Path

from datasette import hookimpl
from datasette.utils.asgi import Response

PLOTLY_JS = Path(__file__).parent / "plotly" / "plotly-liquidation.min.js"
PLOTLY_URL = f"/assets/plotly-{hashlib.sha256(PLOTLY_JS.read_bytes()).hexdigest()[:12]}.min.js"
_plotly = {}


@hookimpl
def startup(datasette):
    async def compress():
        raw = PLOTLY_JS.read_bytes()
        _plotly.update(raw=raw, gzip=await asyncio.to_thread(gzip.compress, raw, 9, mtime=0))
    return compress


async def plotly_js(request):
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    # (lower case, as ASGI has them: asgi-gzip then sees the body is compressed already)
    headers = {"cache-control": "public, max-age=31536000, immutable", "vary": "Accept-Encoding",
               **({"content-encoding": "gzip"} if gzipped else {})}
    return Response(_plotly["gzip" if gzipped else "raw"], headers=headers,
                    content_type="application/javascript; charset=utf-8")


@hookimpl
def register_routes():
    return [(PLOTLY_URL.replace(".", r"\."), plotly_js)]


@hookimpl
def extra_template_vars():
    return {"plotly_url": PLOTLY_URL}

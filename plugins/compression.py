"""Every response compressed, as a static file server would: asgi-gzip (the middleware datasette-gzip wraps)
at level 1, not datasette-gzip's 9, because it compresses in the event loop: on the 30-day heatmap's 336 KB
of JSON, level 9 took 40 ms a request and level 1 6 ms, for a body 15 % larger. Plotly (4.8 MB, from the
installed plotly package: never a CDN) is compressed once, at level 9, when the server starts, and served
from memory under a versioned URL that browsers may cache for good."""

import asyncio
import gzip
from pathlib import Path

import plotly
from asgi_gzip import GZipMiddleware
from datasette import hookimpl
from datasette.utils.asgi import Response

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_URL = f"/assets/plotly-{plotly.__version__}.min.js"
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


@hookimpl(trylast=True)
def asgi_wrapper():
    return lambda app: GZipMiddleware(app, minimum_size=1000, compresslevel=1)

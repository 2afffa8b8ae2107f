"""The layers a request passes before Datasette, in one place and in their order. Datasette applies asgi_wrapper
hooks in pluggy's call order (tryfirst innermost, trylast outermost), and plugins with the same mark in the order
their files were registered, which is the order the folder lists them in: so only this plugin declares the hook,
and each layer's file gives a `wrap(datasette, app)`.

Outermost first, and why there:
- fresh_database: a request reads the builds in place when it began, to its end, whatever the layers below it do
  (a newer build may be put in place meanwhile); the answers ready_answers keeps are those of the request's build.
- ready_answers: an answer kept or stored is sent before anything below runs: no parameter check, no SQL, no
  compression (the kept body is the compressed one; the stored one is compressed by the build).
- compression: everything below is compressed, 400s and the data source's mark included.
- data_source: every answer below says a simulated build's data is simulated, a 400 or a 405 too; inside
  compression, so that it reads a JSON body before it is compressed.
- read_only: a write is refused (405) before the parameter check or Datasette see it.
- liquidation_params: a bad parameter is a 400 before the stored query runs."""

from datasette import hookimpl
from datasette.plugins import pm

# (Datasette registers each file of plugins/ under its file name)
OUTERMOST_FIRST = ("fresh_database.py", "ready_answers.py", "compression.py", "data_source.py", "read_only.py",
                   "liquidation_params.py")


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        for name in reversed(OUTERMOST_FIRST):
            app = pm.get_plugin(name).wrap(datasette, app)
        return app
    return wrap

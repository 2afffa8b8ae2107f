"""The plugins in plugins/, in process over the demo database: one concern each, the order of the layers a request
passes before Datasette (plugins/asgi_stack.py) by what each order would change, and the facts the pages take from
datasette.yaml rather than write themselves (the database, what an empty parameter stands for)."""

import re
import shutil

import pytest
import yaml
from conftest import ROOT
from datasette.app import Datasette
from datasette.plugins import pm
from datasette.tracer import capture_traces

CONFIG = yaml.safe_load((ROOT / "datasette.yaml").read_text())
BAD = "/liquidations/heatmap{}?bucket_usd=130"   # a 400 of the parameter check, as .json, .csv or a page
STORED = "/liquidations/heatmap.json?_json=alive_kusd&model=trade_flow"   # (datasette.yaml, stored_answers)


def served(db, config=CONFIG) -> Datasette:
    return Datasette(immutables=[str(db)], config=config, template_dir=str(ROOT / "templates"),
                     plugins_dir=str(ROOT / "plugins"))


def plugin(name: str):
    """A file of plugins/ as Datasette registered it (by its file name)."""
    return pm.get_plugin(name)


@pytest.fixture
async def datasette(demo_db):
    ds = served(demo_db)
    await ds.client.get("/-/versions.json")   # (the first request's own SQL, the catalog's, done before any trace)
    return ds


async def sql_run(ds, path: str, **headers) -> tuple:
    """The answer to a GET and the SQL statements run while answering it."""
    traces = []
    with capture_traces(traces):
        response = await ds.client.get(path, headers=headers)
    return response, [t["sql"] for t in traces if "sql" in t]


def test_one_plugin_orders_the_layers_and_each_layer_is_a_file_of_its_own():
    served(":memory:")   # (registers plugins/)
    stack = plugin("asgi_stack.py").OUTERMOST_FIRST
    # The tests below show what each other order would change, but one: compression outside ready_answers sends the
    # same answers (asgi-gzip compresses the messages it is sent in place, so the kept body is the compressed one
    # either way, and it passes an answer already compressed as it is), by a hidden dependence. Hence the order here.
    assert stack == ("fresh_database.py", "ready_answers.py", "compression.py", "data_source.py", "read_only.py",
                     "liquidation_params.py")
    ours = [p for p in pm.get_plugins() if str(getattr(p, "__file__", "")).startswith(str(ROOT / "plugins"))]
    assert [p.__name__ for p in ours if hasattr(p, "asgi_wrapper")] == ["asgi_stack.py"]   # no second order to race
    assert sorted(p.__name__ for p in ours if hasattr(p, "wrap")) == sorted(stack)
    # the parameter check is only the check: the controls' values are a template function of page_controls
    assert not hasattr(plugin("liquidation_params.py"), "extra_template_vars")
    assert "allowed" in plugin("page_controls.py").extra_template_vars(datasette=served(":memory:"))


async def test_a_bad_parameters_400_is_compressed_and_says_its_data_is_simulated(datasette):
    """compression and data_source are outside the parameter check: its 400s are compressed and marked like any
    answer (before: the 400 had no x-data-source header and no data_source key)."""
    page = await datasette.client.get(BAD.format(""), headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 400 and page.headers["content-encoding"] == "gzip" and "is not valid" in page.text
    assert page.headers["x-data-source"].startswith("Simulated by build.py demo")
    answer = await datasette.client.get(BAD.format(".json"))
    assert answer.status_code == 400 and list(answer.json())[:2] == ["data_source", "ok"]
    assert answer.json()["data_source"] == answer.headers["x-data-source"]
    assert "is not valid" in answer.json()["error"]


async def test_the_data_source_marks_a_body_before_it_is_compressed(datasette):
    """data_source inside compression: a JSON answer asked afresh, compressed, holds the data_source key (outside
    compression it would find a compressed body, which it cannot read, and leave it as it is)."""
    response, ran = await sql_run(datasette, STORED + "&symbol=BTCUSDT", **{"Cache-Control": "no-cache"})
    assert response.headers["content-encoding"] == "gzip" and "x-cache" not in response.headers and ran
    assert response.json()["data_source"] == response.headers["x-data-source"]


async def test_a_stored_or_kept_answer_runs_no_sql_not_even_the_parameter_checks(datasette):
    """ready_answers outermost: the parameter check (which asks the database which models there are) and the
    query run only when neither a kept nor a stored answer is found."""
    stored, ran = await sql_run(datasette, STORED, **{"Cache-Control": "no-cache"})
    assert stored.headers["x-cache"] == "stored" and ran == []
    fresh, ran = await sql_run(datasette, STORED + "&leverage=10")   # not stored: checked, then run
    assert "x-cache" not in fresh.headers and "select distinct model from models_compared" in ran
    kept, ran = await sql_run(datasette, STORED + "&leverage=10")
    assert kept.headers["x-cache"] == "hit" and ran == [] and kept.json() == fresh.json()


async def test_a_kept_answer_is_kept_compressed(datasette):
    """ready_answers outside compression: what is kept is the compressed body, sent again without compressing it."""
    path = "/liquidations/levels.json?_json=volume_by_price_usd&leverage=10"
    first = await datasette.client.get(path, headers={"Accept-Encoding": "gzip"})
    again = await datasette.client.get(path, headers={"Accept-Encoding": "gzip"})
    assert again.headers["x-cache"] == "hit" and again.headers["content-encoding"] == "gzip"
    assert again.json() == first.json()
    kept = plugin("ready_answers.py")._kept[datasette]
    _, body = kept[(path.split("?")[0], path.split("?")[1].encode(), True)]
    assert body[:2] == b"\x1f\x8b"   # gzip's magic number


async def test_a_write_is_refused_before_the_parameter_check_and_is_marked(datasette):
    """read_only outside the parameter check and inside data_source: a POST with a bad parameter is a 405, not a
    400, and says its database is simulated; a POST to /-/query, a 500 of Datasette's, is a 405 too."""
    for path in (BAD.format(".json"), "/liquidations/-/query"):
        refused = await datasette.client.post(path, json={"sql": "select 1"})
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD, OPTIONS", path
        assert refused.json()["data_source"] == refused.headers["x-data-source"]


async def test_what_an_empty_parameter_stands_for_is_what_the_queries_answer(datasette):
    """The table query_defaults, which the pages' controls show, is what the stored queries' SQL falls back to."""
    [defaults] = (await datasette.client.get("/liquidations/query_defaults.json?_shape=array")).json()
    for query in ("heatmap", "levels"):
        answer = (await datasette.client.get(f"/liquidations/{query}.json?_shape=array")).json()
        assert answer and {row["model"] for row in answer} == {defaults["model"]}, query
    answer = (await datasette.client.get("/liquidations/predicted_vs_realized.json?_shape=array")).json()
    assert {row["horizon"] for row in answer} == {defaults["horizon"]}
    heatmap = (await datasette.client.get("/heatmap")).text
    assert re.search(rf'<select name="model">.*?<option selected>{defaults["model"]}</option>', heatmap, re.DOTALL)
    assert "Ensemble" in heatmap   # (the fit note names the default model's fit)


async def test_the_pages_read_the_database_datasette_yaml_names(demo_db, tmp_path):
    """No template or plugin writes the database's name: served under another name (the file's stem, configured
    so in datasette.yaml), the pages link to it, fetch from it and offer its values."""
    db = shutil.copy(demo_db, tmp_path / "other.db")
    config = {**CONFIG, "databases": {"other": CONFIG["databases"]["liquidations"]}}
    ds = served(db, config)
    for page in ("/heatmap", "/liquidation_map", "/compare_models", "/backtest", "/"):
        response = await ds.client.get(page)
        assert response.status_code == 200 and "/liquidations" not in response.text, page
        assert 'href="/other' in response.text or 'href="/other/' in response.text, page
    heatmap = (await ds.client.get("/heatmap")).text
    assert '"/other" }/${query}.json' in heatmap and "<option selected>BTCUSDT</option>" in heatmap
    assert "Ensemble" in heatmap   # (the fit note: read from the database so named)

"""What a trader sees is true: the fit a chart page names is the one in force for the model and time it shows;
a simulated build says so on every page and in every JSON answer (and a real one does not); no page throws in the
browser, error pages included; a stored query's tab says its title; datasette-plot's axis labels fit."""

import html
import json
import re
import shutil
import sqlite3
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import ROOT, start_server
from test_pages import browser, open_page  # noqa: F401  (the module's Chromium, and a page that records errors)

from liquidation_heatmap import answers


def get(url: str) -> tuple[int, dict, str]:
    """Status, headers (lower-case names) and text of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()


def note(page: str, kind: str) -> str:
    """The text of a page's <p class="{kind}">, '' when it has none."""
    found = re.search(rf'<p class="{kind}">(.*?)</p>', page, re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", found[1])) if found else ""


def calibration_note(server: str, path: str) -> str:
    status, _, page = get(server + path)
    assert status == 200, path
    return note(page, "calibration-note")


def rows(db, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(sql, params).fetchall()


def day_and_time(ts: str) -> str:
    """2024-09-03T00:00:00Z as the banner writes it: 3 Sep 2024 00:00 UTC."""
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    return f"{int(ts[8:10])} {months[int(ts[5:7]) - 1]} {ts[:4]} {ts[11:16]} UTC"


# -- the fitted-parameters banner: the model and time on screen


def test_a_model_without_fits_is_not_given_the_ensembles_fit(server):
    for model in ["trade_flow", "binance_standard", "funding_adjusted", "churn_only"]:
        text = calibration_note(server, f"/liquidation_map?model={model}&at=2024-09-03T12:00")
        assert "fixed parameters" in text and model in text, text
        assert "ensemble" not in text.lower() and "fit " not in text, text   # no fit of another model
        assert not re.search(r"\b(levered_side_ratio|volume_scale|weight_|leverage_share_)", text), text


def as_of(server: str, at: str = "") -> str:
    """The instant the liquidation map shows for `at`, as its stored query answers it."""
    return json.loads(get(f"{server}/liquidations/levels.json?at={at}")[2])["rows"][0]["as_of"]


def test_the_ensemble_banner_names_the_fit_in_force_at_the_time_shown(server, demo_db):
    fits = rows(demo_db, "SELECT DISTINCT fit_id, applies_from, applies_to FROM fitted_parameters "
                         "WHERE fit_id IS NOT NULL ORDER BY applies_from")
    assert len(fits) >= 2, fits   # the 4-day demo is fitted from its third day on
    (earliest,), = rows(demo_db, "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', min(ts), '+' || (SELECT value FROM "
                                 "model_parameters WHERE name = 'time_bucket_s') || ' seconds') FROM map_levels")
    first, last = as_of(server, earliest), as_of(server)   # the first map (the end of the first time bucket), the last
    for at in [first, "2024-09-02T12:30", *(f[1] for f in fits if first <= f[1] <= last), last]:
        t, text = as_of(server, at), calibration_note(server, f"/liquidation_map?at={at}")
        in_force = [f for f in fits if f[1] <= t and (f[2] is None or t < f[2])]   # applies_from <= t < applies_to
        if not in_force:
            assert "no fit yet" in text and f"the first applies from {day_and_time(fits[0][1])}" in text, (t, text)
            assert "fit " not in text.replace("no fit yet", ""), (t, text)
            continue
        fit_id, applies_from, _ = in_force[0]
        assert f"in force from {day_and_time(applies_from)}" in text and f"(fit {fit_id})" in text, (t, text)
        assert set(re.findall(r"\(fit (\d+)\)", text)) == {str(fit_id)}, text   # that fit alone
        for parameter, value in rows(demo_db, "SELECT parameter, value FROM fitted_parameters WHERE fit_id = ? "
                                              "AND parameter LIKE 'weight_%'", fit_id):
            assert f"{parameter.removeprefix('weight_')} {100 * value:.0f} %" in text, (parameter, value, text)
        assert not re.search(r"\b(levered_side_ratio|volume_scale|weight_|leverage_share_)", text), text   # words
    assert calibration_note(server, "/liquidation_map") == calibration_note(server, f"/liquidation_map?at={last}")


def test_the_heatmaps_banner_names_the_fit_at_the_end_of_its_range_and_the_refits_within(server, demo_db):
    fits = rows(demo_db, "SELECT DISTINCT fit_id, applies_from FROM fitted_parameters "
                         "WHERE fit_id IS NOT NULL ORDER BY applies_from")
    end = "2024-09-04T12:00:00Z"
    shown_end = json.loads(get(f"{server}/liquidations/heatmap.json?end={end}&last=3d")[2])["rows"][-1]["ts"]
    text = calibration_note(server, f"/heatmap?end={end}&last=3d")
    start = rows(demo_db, "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?, '-72 hours', '+1 seconds')", end)[0][0]
    within = [f for f in fits if start < f[1] <= shown_end]   # the range as the query takes it: last=3d back from end
    at_end = [f for f in fits if f[1] <= shown_end][-1]
    assert f"end of this range ({day_and_time(shown_end)})" in text and f"(fit {at_end[0]})" in text, text
    assert f"{len(within)} times within this range" in text, (within, text)


def test_pages_of_every_model_name_the_fitted_ones_and_the_fixed_ones(server):
    for path in ["/compare_models?at=2024-09-03T12:00", "/backtest"]:
        text = calibration_note(server, path)
        assert "(fit " in text and "forecast" in text, text
        assert "binance_standard, churn_only, funding_adjusted and trade_flow use fixed parameters" in text, text


# -- simulated data, said everywhere


SIMULATED_PAGES = ["/", "/liquidations", "/liquidations/open_interest", "/liquidations/heatmap?last=12h",
                   "/liquidations/coverage", "/heatmap", "/liquidation_map", "/compare_models", "/backtest",
                   "/liquidations/levels?leverage=-20", "/liquidations/no_such_table"]


def test_a_simulated_build_says_so_on_every_page_and_in_its_json(server):
    for path in SIMULATED_PAGES:
        _, headers, page = get(server + path)
        assert "Simulated data" in note(page, "simulated-note"), path   # the banner, error pages included
        assert headers["x-data-source"].startswith("Simulated by build.py demo"), path   # the parameter check's 400s too
    for path in ["/", "/liquidations", "/liquidations/open_interest"]:   # the source, in Datasette's metadata
        page = get(server + path)[2]
        assert "Simulated by build.py demo (not market data)" in page and "binance-public-data" not in page, path
    for path in ["/liquidations/coverage.json", "/liquidations/open_interest.json?_size=1", "/liquidations.json",
                 "/liquidations/heatmap.json?last=12h"]:
        status, headers, body = get(server + path)
        answer = json.loads(body)
        assert status == 200 and answer["data_source"].startswith("Simulated by build.py demo"), path
        assert headers["x-data-source"] == answer["data_source"]
    assert json.loads(get(server + "/liquidations/coverage.json")[2])["rows"]   # the answer itself intact


def test_a_real_build_shows_its_real_source_unchanged(demo_db, tmp_path):
    real = tmp_path / "liquidations.db"   # the demo's database, as a build of Binance's files would label it
    shutil.copy(demo_db, real)
    with sqlite3.connect(real) as con:
        con.execute("UPDATE build_info SET value = 'Binance files' WHERE key = 'input_data'")
    answers.store_answers(real)   # (rendered again under the new label, as that build would have)
    process, url = start_server(real)
    try:
        for path in ["/", "/liquidations", "/liquidations/open_interest", "/heatmap", "/liquidations/no_such_table"]:
            _, headers, page = get(url + path)
            assert "x-data-source" not in headers and not note(page, "simulated-note") and "Simulated by" not in page
        for path in ["/", "/liquidations", "/liquidations/open_interest"]:
            assert "Binance public data (data.binance.vision), USD-M futures" in get(url + path)[2], path
        body = get(url + "/liquidations/coverage.json")[2]
        assert "data_source" not in json.loads(body)
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- no JavaScript errors anywhere, error pages included


@pytest.mark.parametrize("path", [
    "/liquidations/levels?leverage=-20",              # our parameter check's 400, as HTML
    "/liquidations/levels.json?leverage=-20",         # ... and as JSON
    "/liquidations/-/query?sql=selec+1",              # Datasette's own error: bad ad-hoc SQL
    "/liquidations/no_such_table", "/no_such_page",   # 404s
    "/liquidations/open_interest?symbol=NOPE",        # a filter with no rows
    "/liquidations/data_quality?problem=unreadable_zip",   # a stored query with no rows
    "/liquidations/open_interest/1",                  # a row page
])
def test_error_and_empty_pages_have_no_javascript_errors(browser, server, path):  # noqa: F811
    requests, errors, url = [], [], server + path
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    # every console error but Chromium's own line for the page's status (a 404 page is served with a 404)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not (
        m.text.startswith("Failed to load resource") and m.location["url"] == url) else None)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    assert errors == [], errors
    assert not [r for r in requests if "_size=max" in r], requests   # datasette-plot stayed out
    page.close()


# -- a stored query's tab title; datasette-plot's labels


def test_a_stored_querys_tab_says_its_title(browser, server):  # noqa: F811
    titles = {name: query["title"] for name, query in
              yaml.safe_load((ROOT / "datasette.yaml").read_text())["databases"]["liquidations"]["queries"].items()}
    for name in ["heatmap", "levels", "coverage"]:
        page = open_page(browser, f"{server}/liquidations/{name}", "desktop")
        assert page.title() == f"{titles[name]} - liquidations", page.title()
        page.close()


def test_datasette_plots_y_labels_are_not_cut(browser, server):  # noqa: F811
    page = open_page(browser, f"{server}/liquidations/open_interest", "desktop")
    page.wait_for_selector("text=Show Plot", timeout=30_000).click()
    page.wait_for_selector(".datasette-plot svg", timeout=30_000)
    lefts = page.evaluate("[...document.querySelectorAll('.datasette-plot svg [aria-label=\"y-axis tick label\"] text')]"
                          ".map(t => t.getBoundingClientRect().left)")
    box = page.evaluate("document.querySelector('.datasette-plot').getBoundingClientRect().left")
    assert lefts and min(lefts) >= box >= 0, (min(lefts), box)   # every label inside the plot's box, on screen
    assert page.errors == []

"""The pages in a real browser: Debian's Chromium driven by Playwright, against a real server on loopback."""

import re
import sqlite3
import urllib.parse
from pathlib import Path

import pytest
from conftest import ROOT, chromium_path

ARTIFACTS = ROOT / "tests" / "artifacts"
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
CHART_PAGES = ["heatmap", "liquidation_map", "compare_models", "backtest"]


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def open_page(browser, url: str, viewport: str):
    """A page that records every JavaScript error and console error, unfiltered. datasette-plot's script, which
    throws on a page without a result table, is kept off the chart pages, the index and the
    database page by their templates."""
    page = browser.new_page(viewport=VIEWPORTS[viewport])
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(f"{e}\n{e.stack}"))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


FIGURE_BOXES = """() => {   // the chart page's parts a trader reads, as boxes in the viewport's pixels
  const chart = document.getElementById('chart'), c = chart.getBoundingClientRect(), size = chart._fullLayout._size;
  const box = el => el ? (r => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom}))(el.getBoundingClientRect()) : null;
  const h1 = document.querySelector('h1');
  return {chart: box(chart), title: box(chart.querySelector('.gtitle')), h1: box(h1), h1_cut: h1.scrollWidth > h1.clientWidth,
          plot: {left: c.left + size.l, right: c.left + size.l + size.w, top: c.top + size.t, bottom: c.top + size.t + size.h},
          legend: box(chart.querySelector('.legend')),
          axis: [...chart.querySelectorAll('.xaxislayer-above, .g-xtitle')].map(box),
          prices: [...chart.querySelectorAll('.annotation')].filter(a => a.textContent.startsWith('price ')).map(box),
          controls: [...document.querySelectorAll('.chart-controls select')].map(s => s.selectedOptions[0].textContent)};
}"""


def inside(inner: dict, outer: dict, slack: float = 1) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


def what_is_cut_or_hidden(page, viewport: str) -> list[str]:
    """What a trader would find cut, covered or misleading on a drawn chart page: on a phone the chart not on the
    first screen; a title cut by the screen or the chart's edge or running into the plot; a legend outside the chart
    or over the plot or the axis labels; the price's label outside the plot (it once sat on the subtitle); a
    control reading "first" rather than the value it stands for."""
    b, (width, height) = page.evaluate(FIGURE_BOXES), VIEWPORTS[viewport].values()
    screen = {"left": 0, "right": width, "top": 0, "bottom": 10**6}
    problems = []
    if viewport == "phone" and b["chart"]["top"] > height / 2:
        problems.append(f"the chart starts at y = {b['chart']['top']:.0f}, below the first half screen")
    if not inside(b["title"], screen) or not inside(b["title"], {**b["chart"], "bottom": b["plot"]["top"]}):
        problems.append(f"the chart's title {b['title']} is cut or runs into the plot {b['plot']}")
    if not inside(b["h1"], screen) or b["h1_cut"]:
        problems.append(f"the page's title {b['h1']} is cut")
    below_axis = max(a["bottom"] for a in b["axis"])
    if b["legend"] and (not inside(b["legend"], b["chart"]) or b["legend"]["top"] < below_axis):
        problems.append(f"the legend {b['legend']} is cut or covers the axis (its labels end at {below_axis:.0f})")
    problems += [f"the price label {p} is outside the plot {b['plot']}" for p in b["prices"] if not inside(p, b["plot"])]
    problems += [f"a control reads {text!r}" for text in b["controls"] if text in ("", "first")]
    return problems


@pytest.mark.parametrize("viewport", VIEWPORTS)
@pytest.mark.parametrize("query", CHART_PAGES)
def test_chart_pages_draw_their_data(browser, server, demo_db, query, viewport):
    requests, sent = [], []
    page = browser.new_page(viewport=VIEWPORTS[viewport])
    page.on("request", lambda r: requests.append(r.url) if "/liquidations/" in r.url else None)
    page.on("response", lambda r: sent.append(r.headers.get("x-cache")) if "/liquidations/" in r.url else None)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(f"{e}\n{e.stack}"))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server}/{query}")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    assert len(requests) == 1 and requests[0].split("?")[0].endswith(".json"), requests   # one request per view
    if query != "backtest":   # JSON columns come as arrays and objects (Datasette's ?_json=), not strings to parse
        assert "_json=" in requests[0], requests
    # a first view's answer is one the build stored (answers.py; or one kept since): the query does not run
    assert sent[0] in ("stored", "hit"), (requests, sent)
    pairs = sorted((k, v) for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(requests[0]).query) if v)
    with sqlite3.connect(demo_db) as con:
        assert con.execute("SELECT 1 FROM stored_answers WHERE request = ?", [
            urllib.parse.urlsplit(requests[0]).path + "?" + urllib.parse.urlencode(pairs)]).fetchone(), requests
    title = page.evaluate("document.getElementById('chart').layout.title.text")
    assert "BTCUSDT" in title and ("UTC" in title), title   # what, where and when
    traces = page.evaluate("document.getElementById('chart').data.map(t => ({type: t.type, "
                           "points: (t.z || t.y || t.close || []).length, values: (t.z ? t.z.flat() : t.y || t.close || [])"
                           ".filter(v => v > 0).length}))")
    assert traces and all(t["points"] > 0 for t in traces), traces
    assert sum(t["values"] for t in traces) > 0, "every value is zero"
    assert "estimate" in page.inner_text(".estimate-note").lower()
    assert "simulated" in page.inner_text(".simulated-note")   # the demo's files: said on every chart page
    assert page.query_selector("script[src*='cdn']") is None
    bundled = page.evaluate("Object.keys(Plotly.PlotSchema.get().traces)")   # the partial bundle, plugins/plotly/
    used = set(re.findall(r'\btype: "([a-z]+)"', (ROOT / "templates" / "pages" / f"{query}.html").read_text()))
    assert used - {"date", "line"} <= set(bundled), (used, bundled)   # (axis and shape types are not traces)
    width = page.evaluate("document.getElementById('chart').getBoundingClientRect().width")
    assert 0 < width <= VIEWPORTS[viewport]["width"]
    assert what_is_cut_or_hidden(page, viewport) == []
    shot(page, f"{query}-{viewport}")
    assert page.errors == []
    page.close()


def test_heatmap_draws_price_line_and_buckets_on_a_shared_axis(browser, server):
    page = open_page(browser, f"{server}/heatmap?model=binance_standard&bucket_usd=500&time_bucket_s=3600", "desktop")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    heat, candles = page.evaluate("document.getElementById('chart').data.map(t => ({type: t.type, x: t.x.length, "
                                  "y: t.y ? t.y.slice(0, 3) : [], rows: t.z ? t.z.length : 0, zmax: t.zmax}))")
    assert heat["type"] == "heatmap" and candles["type"] == "candlestick"
    assert heat["x"] == candles["x"] > 24  # one column per hour, a candle at each
    assert heat["y"][1] - heat["y"][0] == 500 and heat["rows"] > 3
    title = page.evaluate("document.getElementById('chart').layout.title.text")
    assert title.startswith("binance_standard, BTCUSDT<br>2024-09-01 00:00 to 2024-09-05 00:00 UTC"), title
    # each column of cells is the levels at the end of its time bucket, the candle the price during it: both span
    # the bucket [ts, ts + 1 h], drawn at its middle, and the hover names the bucket and its end
    rows = page.evaluate("fetch('/liquidations/heatmap.json?model=binance_standard&bucket_usd=500&time_bucket_s=3600')"
                         ".then(r => r.json()).then(b => b.rows.map(r => [Date.parse(r.ts), r.price_close]))")
    chart = page.evaluate("(c => ({x: c.data.map(t => t.x.map(Date.parse)), range: c._fullLayout.xaxis.range.map(c._fullLayout.xaxis.r2l),"
                          " text: c.data[0].text.map(row => row[0]).find(t => t), shapes: c.layout.shapes,"
                          " labels: c.layout.annotations.map(a => a.text)}))(document.getElementById('chart'))")
    hour = 3600_000
    assert chart["x"][0] == chart["x"][1] == [ts + hour / 2 for ts, _ in rows]
    assert chart["range"] == [rows[0][0], rows[-1][0] + hour]
    assert chart["text"].startswith("2024-09-01 00:00-01:00 UTC<br>") and "alive at 01:00 (end)" in chart["text"]
    # the current price: a line across the plot at the latest close of the range shown, labelled with it
    close = rows[-1][1]
    assert [(s["y0"], s["y1"], s["xref"], s["x0"], s["x1"]) for s in chart["shapes"]] == [(close, close, "paper", 0, 1)]
    assert [float(t.removeprefix("price ").replace(",", "")) for t in chart["labels"]] == [close]
    # the colour threshold: Plotly's slider clips the scale at a percentile
    steps = page.evaluate("document.getElementById('chart').layout.sliders[0].steps.map(s => [s.label, s.args[0].zmax[0]])")
    assert [label for label, _ in steps] == ["90", "95", "98", "99", "99.5", "100"]
    assert [v for _, v in steps] == sorted(v for _, v in steps) and heat["zmax"] == steps[3][1]
    # hover in readable units
    assert page.evaluate("[LH.usd(1234), LH.usd(2500000), LH.usd(3.2e9)]") == ["1.23K", "2.50M", "3.20B"]
    # the presets are links: 24h shows the last 24 hours
    page.click("nav.presets a:text('24h')")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    assert "last=24h" in page.url and page.evaluate("document.getElementById('chart').data[0].x.length") == 24
    assert page.errors == []


def test_controls_live_in_the_url(browser, server):
    page = open_page(browser, f"{server}/liquidation_map", "desktop")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    page.select_option("select[name=model]", "trade_flow")
    page.fill("input[name=at]", "2024-09-03T12:00")
    page.click("input[type=submit]")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    assert "model=trade_flow" in page.url and "at=2024-09-03T12%3A00" in page.url
    title = page.evaluate("document.getElementById('chart').layout.title.text")
    assert "trade_flow" in title and "2024-09-03 12:00 UTC" in title
    names = page.evaluate("document.getElementById('chart').data.map(t => [t.type, t.name, t.yaxis || 'y'])")
    assert [n for t, n, _ in names if t == "bar"] == ["2x", "5x", "10x", "20x", "50x", "100x", "125x"]  # by tier
    assert [(n, y) for t, n, y in names if t == "scatter"] == [("cumulative longs", "y2"), ("cumulative shorts", "y2")]
    axes = page.evaluate("(l => [l.barmode, l.yaxis.rangemode, l.yaxis2.rangemode, l.shapes[0].x0])"
                         "(document.getElementById('chart').layout)")
    assert axes[:3] == ["stack", "tozero", "tozero"] and axes[3] > 0   # both axes from zero; the price marked
    # the shared link opens the same view
    again = open_page(browser, page.url, "desktop")
    assert again.eval_on_selector("select[name=model]", "s => s.value") == "trade_flow"
    assert page.errors == [] and again.errors == []


def test_backtest_page_shows_verdicts_per_horizon_and_the_chosen_horizons_chart(browser, server):
    page = open_page(browser, f"{server}/backtest?horizon=4h", "phone")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    note = page.inner_text(".estimate-note")
    assert "estimates" in note and "out of sample" in note and "earlier windows" in note
    text = page.inner_text("body")
    for metric in ["volume_pearson", "volume_spearman", "location_gain_bits", "precision", "calibration"]:
        assert f"{metric}:" in text or f"{metric}, " in text, metric  # each metric explained
    headings = page.eval_on_selector_all("#scores h3", "hs => hs.map(h => h.textContent)")
    assert [h.split(" ")[0] for h in headings] == ["1h", "4h", "24h"] and "windows" in headings[0]
    tables = page.eval_on_selector_all("table.verdicts", "ts => ts.map(t => ({rows: t.rows.length - 1, "
                                       "header: [...t.rows[0].cells].map(c => c.textContent)}))")
    assert all(t["rows"] == 14 for t in tables), tables  # 7 models (the forecast, churn_only ...) x 2 sides
    assert tables[0]["header"] == ["model, side", "volume_pearson", "volume_spearman", "location_gain_bits",
                                   "precision", "calibration"]
    verdicts = page.eval_on_selector_all("table.verdicts td small", "cs => cs.map(c => c.textContent)")
    assert verdicts and all(v == "" or v.startswith(("beats ", "no better than ", "worse than ")) for v in verdicts)
    assert any(v.startswith("beats ") for v in verdicts) or any(v.startswith("no better") for v in verdicts)
    assert page.eval_on_selector("select[name=horizon]", "s => [s.value, [...s.options].map(o => o.value)]") == [
        "4h", ["1h", "4h", "24h"]]
    chart = page.evaluate("(c => ({title: c.layout.title.text, x: c.data[0].x, visible: c.data.map(t => t.visible)}))"
                          "(document.getElementById('chart'))")
    assert "4h windows" in chart["title"] and all(int(ts[11:13]) % 4 == 0 for ts in chart["x"])
    baselines = page.evaluate("document.getElementById('chart').data.filter(t => t.visible === 'legendonly')"
                              ".map(t => t.name.split(' ')[0])")
    assert len(baselines) >= 4 and chart["visible"].count(True) == 7  # the models drawn; baselines in the legend
    assert all(b in text for b in baselines), baselines  # every baseline explained
    page.select_option("select[name=horizon]", "24h")
    page.click("input[type=submit]")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    assert "horizon=24h" in page.url and "24h windows" in page.evaluate(
        "document.getElementById('chart').layout.title.text")
    shot(page, "backtest-verdicts-phone")
    assert page.errors == []


def test_backtest_chart_sets_predicted_and_realized_on_one_axis(browser, server):
    """Predictions 15 times the realized volume look 15 times too high: one y axis holds both, and the legend
    (every model) fits under the plot."""
    page = open_page(browser, f"{server}/backtest", "desktop")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    figure = page.evaluate("(c => ({axes: Object.keys(c._fullLayout).filter(k => /^yaxis[0-9]*$/.test(k)),"
                           " traces: c.data.map(t => [t.name, t.yaxis || 'y', t.visible === true ? Math.max(...t.y) : 0]),"
                           " top: c._fullLayout.yaxis.range[1]}))(document.getElementById('chart'))")
    assert figure["axes"] == ["yaxis"]
    assert {axis for _, axis, _ in figure["traces"]} == {"y"} and figure["traces"][0][0] == "realized"
    assert figure["top"] >= max(top for _, _, top in figure["traces"]) > 0   # the axis holds the highest of them
    assert what_is_cut_or_hidden(page, "desktop") == []   # (the legend among them)
    assert page.errors == []


def test_compare_models_reads_as_traders_read_it(browser, server):
    page = open_page(browser, f"{server}/compare_models", "desktop")
    page.wait_for_selector("#chart[data-drawn=true]", timeout=30_000)
    as_of = page.evaluate("fetch('/liquidations/compare_models.json').then(r => r.json()).then(b => b.rows[0].as_of)")
    assert f"at {as_of[:16].replace('T', ' ')} UTC" in page.evaluate("document.getElementById('chart').layout.title.text")
    headers = page.eval_on_selector_all("#totals th", "hs => hs.map(h => h.textContent)")
    assert headers[:3] == ["model", "alive longs", "alive shorts"] and not any("_" in h for h in headers), headers
    cells = page.eval_on_selector_all("#totals tr:nth-child(2) td", "cs => cs.map(c => c.textContent)")
    assert re.fullmatch(r"\d+\.\d\d[KMB]", cells[1]) and re.fullmatch(r"\d\d,\d\d\d(\.\d)?", cells[3]), cells
    assert page.errors == []


def test_a_bad_parameter_is_explained_on_the_page(browser, server):
    page = open_page(browser, f"{server}/heatmap?start=yesterday", "desktop")
    page.wait_for_selector("#chart.message-error", timeout=30_000)
    assert "start='yesterday' is not valid" in page.inner_text("#chart")


def test_index_explains_and_links_everything(browser, server):
    page = open_page(browser, server + "/", "desktop")
    page.wait_for_selector("#tables li", timeout=30_000)
    text = page.inner_text("body")
    assert "estimate" in text.lower() and "not advice" in text
    links = page.eval_on_selector_all("a", "links => links.map(a => a.getAttribute('href'))")
    for name in CHART_PAGES:
        assert f"/{name}" in links, name
    for name in ["heatmap", "levels", "predicted_vs_realized", "coverage", "data_quality", "heatmap_cells",
                 "data_quality_problems", "realized_liquidations"]:
        assert f"/liquidations/{name}" in links, name
    counts = page.eval_on_selector_all("#tables li", "items => items.map(i => i.textContent)")
    assert any("heatmap_cells" in c and "10,001" not in c for c in counts)   # exact counts
    shot(page, "index-desktop")
    assert page.errors == []


@pytest.mark.parametrize("path", ["/liquidations", "/liquidations/heatmap", "/liquidations?sql=select+ts,+close+from+price_klines",
                                  "/liquidations/heatmap_cells", "/liquidations/compare_models"])
def test_data_pages_have_no_javascript_errors(browser, server, path):
    page = open_page(browser, server + path, "desktop")
    page.wait_for_load_state("networkidle")
    assert page.errors == []


def test_datasette_plot_works_on_tables(browser, server):
    page = open_page(browser, f"{server}/liquidations/open_interest", "desktop")
    button = page.wait_for_selector("text=Show Plot", timeout=30_000)
    button.click()
    page.wait_for_selector("svg", timeout=30_000)
    shot(page, "open_interest-plot")
    assert page.errors == []

"""simulate.py: Vision-format files that are internally consistent and driven by real liquidations."""

import csv
import hashlib
import importlib.util
import io
import sys
import zipfile
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import duckdb
import pytest

from liquidation_heatmap import simulate

DAYS, TRADES = 3, 3000
DATES = ["2024-09-01", "2024-09-02", "2024-09-03"]
UM = "data/futures/um"
ROOT = Path(simulate.__file__).parent.parent   # the checkout
# The walk-forward fit's candidate stop-loss shares (sql/calibration/ stop_candidates) and the
# models' default (sql/seeds/model_parameters.csv stop_loss_share)
FIT_STOP_SHARES = (0.0, 0.5, 0.8, 0.95)


def run(out: Path, seed: int = 1) -> dict:
    return simulate.simulate(out, days=DAYS, seed=seed, trades_per_day=TRADES, start=DATES[0], progress=lambda _: None)


def read_rows(zip_path: Path) -> list[dict]:
    with zipfile.ZipFile(zip_path) as zf:
        return list(csv.DictReader(io.TextIOWrapper(zf.open(zip_path.stem + ".csv"))))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def content_digest(root: Path) -> str:
    """sha256 over every written CSV's text (each zip's CSV uncompressed, the ground truth, params.json), in
    path order. Uncompressed, because the zip bytes also depend on the zlib build, which is not ours to pin."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".zip", ".csv", ".json")):
        digest.update(str(path.relative_to(root)).encode())
        with zipfile.ZipFile(path) if path.suffix == ".zip" else open(path, "rb") as f:
            digest.update(f.read(path.stem + ".csv") if path.suffix == ".zip" else f.read())
    return digest.hexdigest()


def model_default_mix() -> dict[int, float]:
    with (ROOT / "sql/seeds/leverage_tiers.csv").open() as f:
        return {int(r["leverage"]): float(r["weight"]) for r in csv.DictReader(f)}


def model_brackets() -> list[tuple]:
    with (ROOT / "sql/seeds/maintenance_brackets.csv").open() as f:
        return [(float(r["notional_cap_usd"]), int(r["max_leverage"]), float(r["maintenance_margin_rate"]),
                 float(r["maintenance_amount_usd"])) for r in csv.DictReader(f) if r["symbol"] == "BTCUSDT"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One 3-day run; each zip's CSV extracted to csv/{kind}/ so DuckDB can glob one data type."""
    root = tmp_path_factory.mktemp("sim")
    summary = run(root / "a")
    for zp in (root / "a" / UM).rglob("*.zip"):
        kind = zp.relative_to(root / "a" / UM).parts[1]
        with zipfile.ZipFile(zp) as zf:
            zf.extractall(root / "csv" / kind)
    return root, summary


def q(sim, sql: str) -> list[tuple]:
    """Run sql with {kind} replaced by a glob over that data type's CSVs."""
    csv = sim[0] / "csv"
    return duckdb.sql(sql.format_map({k.name: f"'{k}/*.csv'" for k in csv.iterdir()})).fetchall()


def test_liquidation_price_matches_binance_vectors():
    # Binance's test vectors, EP = 100,000; 10,000 USDT sits in the first bracket of either table (0.4 %, 0)
    cases = [(10, 0.1, 90_361.45, 109_561.75), (100, 0.1, 99_397.59, 100_597.61)]
    # 500,000 USDT: the simulator's third bracket (1 %, cum 1,300): (100,000 x 0.9 - 1,300 / 5) / 0.99
    cases.append((10, 5, (90_000 - 260) / 0.99, (110_000 + 260) / 1.01))
    for lev, qty, long_lp, short_lp in cases:
        assert simulate.liq_price(1, 100_000, qty, lev) == pytest.approx(long_lp, abs=0.01)
        assert simulate.liq_price(-1, 100_000, qty, lev) == pytest.approx(short_lp, abs=0.01)
    assert simulate.bracket(500_000)[2:] == (0.01, 1300)


def test_bracket_table_is_its_own_and_consistent():
    """The simulator's brackets are a Binance table of its own, not the models' seed file, and obey
    cum_n = cum_(n-1) + floor_n * (MMR_n - MMR_(n-1)), floor_n = previous cap."""
    brackets = simulate.BRACKETS
    caps = [b[0] for b in brackets]
    assert caps == sorted(caps) and brackets[0] == (50e3, 125, 0.004, 0) and brackets[-1][1:3] == (1, 0.5)
    assert [b[1] for b in brackets] == sorted((b[1] for b in brackets), reverse=True)
    for prev, cur in pairwise(brackets):
        assert cur[2] > prev[2] and cur[3] == pytest.approx(prev[3] + prev[0] * (cur[2] - prev[2]))
    models = model_brackets()
    assert models and list(brackets) != models and brackets[0] != models[0]


def test_simulator_reads_nothing_of_the_models(tmp_path):
    """A fresh import of simulate.py and a one-day run open no file under sql/ (the models' seeds)."""
    opened, recording = [], [False]

    def hook(event, args):
        if recording[0] and event == "open" and isinstance(args[0], str | bytes | Path):
            opened.append(Path(args[0].decode() if isinstance(args[0], bytes) else args[0]).resolve())
    sys.addaudithook(hook)  # hooks cannot be removed: this one records only while recording[0]
    recording[0] = True
    try:
        spec = importlib.util.spec_from_file_location("simulate_fresh", ROOT / "liquidation_heatmap" / "simulate.py")
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        fresh.simulate(tmp_path, days=1, seed=4, trades_per_day=500, progress=lambda _: None)
    finally:
        recording[0] = False
    assert any(p.is_relative_to(tmp_path.resolve()) for p in opened)  # the hook sees the run's files
    assert not [p for p in opened if p.is_relative_to(ROOT / "sql")]
    assert "seeds" not in (ROOT / "liquidation_heatmap" / "simulate.py").read_text()


def test_same_seed_is_byte_identical_and_other_seed_differs(sim, tmp_path):
    first = files(sim[0] / "a")
    run(tmp_path / "again")
    assert files(tmp_path / "again") == first
    run(tmp_path / "other", seed=2)
    other = files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if "aggTrades" in k and k.endswith(".zip"))


# Pinned output of seed 1, 3 days, 3000 trades/day. The files (and every score built from them) must not
# change when DuckDB is upgraded: its hash() and float sums once made them do so. If this fails after a
# DuckDB or Python upgrade, the simulator depends on that version again: fix that. If it fails after a
# deliberate change to simulate.py (its parameters, draws or formats), update the digest in that commit.
PINNED_DIGEST = "f8b5f697badfd9993673a8860eebec87844ef75c13941703dbb2b363a0759836"


def test_output_is_pinned_for_a_seed(sim):
    assert content_digest(sim[0] / "a") == PINNED_DIGEST


def test_vision_layout_checksums_and_headers(sim):
    root = sim[0] / "a"
    zips = sorted((root / UM).rglob("*.zip"))
    expected = {f"daily/{kind}/BTCUSDT/{sub}BTCUSDT-{tag}-{d}.zip" for d in DATES for kind, sub, tag in [
        ("aggTrades", "", "aggTrades"), ("klines", "1m/", "1m"), ("markPriceKlines", "1m/", "1m"),
        ("metrics", "", "metrics"), ("liquidationSnapshot", "", "liquidationSnapshot")]}
    expected.add("monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-09.zip")
    assert {str(z.relative_to(root / UM)) for z in zips} == expected
    assert sim[1]["files_written"] == len(zips)
    for z in zips:
        digest = hashlib.sha256(z.read_bytes()).hexdigest()
        assert Path(f"{z}.CHECKSUM").read_text() == f"{digest}  {z.name}\n"
        with zipfile.ZipFile(z) as zf:
            assert zf.namelist() == [z.stem + ".csv"]
            header = zf.read(z.stem + ".csv").decode().split("\n", 1)[0]
        assert header == simulate.HEADERS[z.relative_to(root / UM).parts[1]]
    for name in ("open-positions-1h", "open-positions-by-leverage-1h", "liquidations"):
        assert (root / "simulator" / f"BTCUSDT-{name}.csv").exists()
    assert '"seed": 1' in (root / "simulator" / "params.json").read_text()


def test_klines_equal_aggregates_of_aggtrades(sim):
    agg = """SELECT transact_time // 60000 * 60000 AS open_time, arg_min(price, agg_trade_id) AS open,
        max(price) AS high, min(price) AS low, arg_max(price, agg_trade_id) AS close, sum(quantity) AS volume,
        sum(price * quantity) AS quote_volume, sum(last_trade_id - first_trade_id + 1) AS count,
        sum(quantity) FILTER (NOT is_buyer_maker) AS tbv, sum(price * quantity) FILTER (NOT is_buyer_maker) AS tbq
      FROM read_csv({aggTrades}, types = {{'price': 'DECIMAL(18,1)', 'quantity': 'DECIMAL(18,3)'}}) GROUP BY 1"""
    kl = """SELECT open_time, open, high, low, close, volume, quote_volume, count, taker_buy_volume,
        taker_buy_quote_volume FROM read_csv({klines}, types = {{'open': 'DECIMAL(18,1)', 'high': 'DECIMAL(18,1)',
        'low': 'DECIMAL(18,1)', 'close': 'DECIMAL(18,1)', 'volume': 'DECIMAL(18,3)', 'quote_volume': 'DECIMAL(38,4)',
        'taker_buy_volume': 'DECIMAL(18,3)', 'taker_buy_quote_volume': 'DECIMAL(38,4)'}})"""
    assert q(sim, f"SELECT count(*) FROM ({kl})") == [(DAYS * 1440,)]
    mismatched = f"""SELECT count(*) FROM ({agg}) a FULL JOIN ({kl}) k USING (open_time)
      WHERE (a.open, a.high, a.low, a.close, a.volume, a.quote_volume, a.count, coalesce(a.tbv, 0), coalesce(a.tbq, 0))
        IS DISTINCT FROM (k.open, k.high, k.low, k.close, k.volume, k.quote_volume, k.count, k.taker_buy_volume,
                          k.taker_buy_quote_volume)"""
    assert q(sim, mismatched) == [(0,)]
    assert q(sim, "SELECT count(*) FROM read_csv({klines}) WHERE close_time != open_time + 59999 OR ignore") == [(0,)]


def test_aggtrades_ids_times_and_steps(sim):
    ids = q(sim, """SELECT count(*), count(DISTINCT agg_trade_id), min(agg_trade_id), max(agg_trade_id),
        bool_and(first_trade_id = prev_last + 1 AND last_trade_id >= first_trade_id),
        bool_and(transact_time >= prev_ms),
        bool_and(regexp_full_match(price, '[1-9][0-9]*[.][0-9]') AND regexp_full_match(quantity, '[0-9]+[.][0-9]{{3}}')
          AND quantity::DOUBLE > 0)
      FROM (SELECT *, lag(last_trade_id, 1, 0) OVER w AS prev_last, lag(transact_time, 1, 0) OVER w AS prev_ms
        FROM read_csv({aggTrades}, types = {{'price': 'VARCHAR', 'quantity': 'VARCHAR'}})
        WINDOW w AS (ORDER BY agg_trade_id))""")
    n = ids[0][0]
    assert ids == [(n, n, 1, n, True, True, True)] and n == sim[1]["agg_trades"]
    assert n >= DAYS * 1440 * simulate.PARAMS["min_trades_per_min"]  # position trades exceed TRADES here
    assert q(sim, "SELECT DISTINCT typeof(is_buyer_maker) FROM read_csv({aggTrades})") == [("BOOLEAN",)]


def test_metrics_rows_open_interest_and_duplicate_midnight(sim):
    days = [read_rows(z) for z in sorted((sim[0] / "a" / UM / "daily/metrics").rglob("*.zip"))]
    for rows, day in zip(days, DATES, strict=True):
        times = [r["create_time"] for r in rows]
        assert len(times) == 289 and times[0] == f"{day} 00:00:00" and times[-1].endswith(" 00:00:00")
        assert times[12] == f"{day} 01:00:00" and times[-1] > times[-2] > times[0]
    assert days[0][-1] == days[1][0] and days[1][-1] == days[2][0]  # the real files' midnight duplicate
    # the value is coins x the last price at the label (= close of the minute that ends there)
    bad = q(sim, """SELECT count(*) FROM read_csv({metrics}) m JOIN read_csv({klines}) k
        ON k.open_time = epoch_ms(m.create_time) - 60000
      WHERE abs(m.sum_open_interest * k.close - m.sum_open_interest_value) > 0.01""")
    assert bad == [(0,)]
    ratios = q(sim, """SELECT min(count_long_short_ratio), max(count_long_short_ratio), min(sum_open_interest_value),
        max(sum_open_interest_value), min(sum_taker_long_short_vol_ratio) FROM read_csv({metrics})""")[0]
    assert 0.2 < ratios[0] <= ratios[1] < 5 and 1e9 < ratios[2] <= ratios[3] < 2e10 and ratios[4] >= 0


def test_open_interest_is_total_longs_and_total_shorts(sim):
    """Every contract has a long and a short side: speculators' longs + market makers' longs
    = speculators' shorts + market makers' shorts = open interest, exactly, in every hour of the truth and
    in the metrics; the speculators' own long share moves, the market makers hold the difference."""
    truth = sim[0] / "a" / "simulator"
    metrics = {r["create_time"]: r for z in sorted((sim[0] / "a" / UM).rglob("*metrics*.zip")) for r in read_rows(z)}
    hourly = list(csv.DictReader((truth / "BTCUSDT-open-positions-1h.csv").open()))
    assert len(hourly) == DAYS * 24 + 1
    shares = []
    for row in hourly:
        m = metrics[row["time"].replace("T", " ").rstrip("Z")]
        long_qty, short_qty, mm_long, mm_short, oi = (Decimal(row[k]) for k in (
            "long_quantity", "short_quantity", "market_maker_long_quantity", "market_maker_short_quantity",
            "open_interest_quantity"))
        assert long_qty + mm_long == short_qty + mm_short == oi == Decimal(m["sum_open_interest"])
        assert (long_qty + mm_long) / (long_qty + mm_long + short_qty + mm_short) == Decimal("0.5")
        assert min(mm_long, mm_short) == 0  # one netted inventory
        shares.append(long_qty / (long_qty + short_qty))
        # open interest counts each contract once: near one side's notional (truth at entry, metrics at the close)
        side_usd = max(float(row["long_notional_usd"]), float(row["short_notional_usd"]))
        assert float(m["sum_open_interest_value"]) == pytest.approx(side_usd, rel=0.1)
        # the account and position ratios describe the speculators, as Binance's describe traders
        ratio = int(row["long_positions"]) / int(row["short_positions"])
        assert float(m["count_long_short_ratio"]) == pytest.approx(ratio, abs=1e-5)
        assert float(m["sum_toptrader_long_short_ratio"]) == pytest.approx(float(long_qty / short_qty), abs=1e-5)
    assert max(shares) - min(shares) > Decimal("0.02")  # the speculators' long share varies
    by_lev = {}
    for row in csv.DictReader((truth / "BTCUSDT-open-positions-by-leverage-1h.csv").open()):
        by_lev[row["time"]] = by_lev.get(row["time"], 0) + float(row["notional_usd"])
    assert {r["time"]: pytest.approx(float(r["long_notional_usd"]) + float(r["short_notional_usd"]), abs=1)
            for r in hourly} == by_lev


def test_liquidations_happen_where_the_mark_price_crossed(sim):
    snaps = [r for z in sorted((sim[0] / "a" / UM).rglob("*liquidationSnapshot*.zip")) for r in read_rows(z)]
    truth = list(csv.DictReader((sim[0] / "a" / "simulator" / "BTCUSDT-liquidations.csv").open()))
    ranges = {t: r for t, *r in q(sim, """SELECT open_time, mk.low, mk.high, k.low, k.high
        FROM read_csv({markPriceKlines}) mk JOIN read_csv({klines}) k USING (open_time)""")}
    assert len(snaps) == len(truth) == sim[1]["liquidations"] > 20
    assert {s["side"] for s in snaps} == {"SELL", "BUY"}
    for s, t in zip(snaps, truth, strict=True):
        sign = 1 if s["side"] == "SELL" else -1  # SELL = a long was liquidated
        entry, qty, lev = float(t["entry_price"]), float(t["quantity"]), int(t["leverage"])
        lp = float(t["liquidation_price"])
        mark_low, mark_high, low, high = ranges[int(s["time"]) // 60_000 * 60_000]
        assert t["side"] == ("long" if sign > 0 else "short")
        assert (t["time"], t["quantity"]) == (s["time"], s["original_quantity"])
        assert (s["order_type"], s["time_in_force"], s["order_status"]) == ("LIMIT", "IOC", "FILLED")
        assert lp == pytest.approx(simulate.liq_price(sign, entry, qty, lev), abs=0.01)
        assert float(s["price"]) == pytest.approx(entry * (1 - sign / lev), abs=0.051)  # bankruptcy price, to the tick
        assert (mark_low <= lp) if sign > 0 else (mark_high >= lp)  # triggered by the mark price
        assert low <= float(s["average_price"]) <= high
        assert (entry > lp > float(s["price"])) if sign > 0 else (entry < lp < float(s["price"]))


def test_no_position_survives_a_mark_cross():
    """After every minute, no position opened before it sits beyond that minute's mark range."""
    mkt = simulate.Market(3, simulate.leverage_mix_for_seed(3), simulate.PARAMS)
    for minute in range(3000):
        before = mkt.next_pid
        _, mark, _, _ = mkt.minute(minute * 60_000)
        if minute % 100 == 99:
            old = [p for p in mkt.open.values() if p.pid < before]
            assert old and all(p.lp < mark[2] / 10 if p.side > 0 else p.lp > mark[1] / 10 for p in old)


def test_leverage_mix_is_drawn_per_seed_and_is_not_the_models_default(sim):
    """The traders must not share the models' assumption (sql/seeds/leverage_tiers.csv)."""
    default, mixes = model_default_mix(), [simulate.leverage_mix_for_seed(seed) for seed in (1, 2)]
    assert mixes[0] != mixes[1] and mixes[0] == simulate.leverage_mix_for_seed(1)
    for mix in mixes:
        assert sum(mix.values()) == pytest.approx(1, abs=1e-3) and set(mix) <= set(simulate.LEVERAGES)
        assert sum(abs(mix.get(lev, 0) - default.get(lev, 0)) for lev in {*mix, *default}) > 0.2
    params = (sim[0] / "a" / "simulator" / "params.json").read_text()
    assert f'"leverage_mix": {{\n  "{min(mixes[0])}": {mixes[0][min(mixes[0])]},' in params


def test_no_leverage_the_traders_use_is_a_model_tier(sim):
    """The traders' leverage grid, every seed's mix, and every leverage in the run's true books and
    liquidations (after Binance's bracket caps) avoid the models' tiers (sql/seeds/leverage_tiers.csv)."""
    tiers = set(model_default_mix())
    assert tiers and not tiers & set(simulate.LEVERAGES)
    assert all(set(simulate.leverage_mix_for_seed(seed)) <= set(simulate.LEVERAGES) for seed in range(1, 30))
    truth = sim[0] / "a" / "simulator"
    used = {int(r["leverage"]) for name in ("open-positions-by-leverage-1h", "liquidations")
            for r in csv.DictReader((truth / f"BTCUSDT-{name}.csv").open())}
    assert len(used) > 5 and not used & tiers
    # a large position at high leverage is capped by the brackets to one of the traders' own leverages
    mkt = simulate.Market(1, {110: 1.0}, {**simulate.PARAMS, "notional_median_usd": 3e6, "notional_sigma": 0.5})
    for minute in range(30):
        mkt.minute(minute * 60_000)
    levs = {p.lev for p in mkt.open.values()}
    assert len(levs) > 1 and levs <= set(simulate.LEVERAGES) and not levs & tiers


def test_realized_stop_share_is_none_of_the_fits_candidates(sim):
    """Whether a position has a stop-loss is drawn per position, likelier at higher leverage; the share
    realized over a run is none of the fit's candidate stop-loss shares, so a fit that picks one does
    not merely recover the simulator's setting."""
    share = sim[1]["positions_with_stop"] / sim[1]["positions_opened"]
    assert 0.6 < share < 0.78 and all(abs(share - c) > 0.02 for c in FIT_STOP_SHARES), share
    assert simulate.stop_probability(1) < simulate.stop_probability(25) < simulate.stop_probability(110)
    mkt = simulate.Market(5, simulate.leverage_mix_for_seed(5), simulate.PARAMS)
    for minute in range(600):
        mkt.minute(minute * 60_000)
    stops = {pid: level for key, heap in mkt.heaps.items() if key[0] == "stop" for _, pid, level in heap}
    ways = [(stops[p.pid] - p.entry / 10) / (p.lp - p.entry / 10) for p in mkt.open.values() if p.pid in stops]
    a, b = simulate.PARAMS["stop_way_range"]
    assert len(ways) > 1000 and all(a - 1e-9 <= w <= b + 1e-9 for w in ways)
    assert 0.55 < sum(ways) / len(ways) < 0.67  # Beta(3, 2) mapped onto the range: mean ~0.61, not 0.5
    assert max(ways) - min(ways) > 0.6  # a spread, not one distance


def test_arguments_symbol_mix_and_trade_count(tmp_path):
    summary = simulate.simulate(tmp_path, days=1, symbol="ETHUSDT", trades_per_day=50_000,
                                leverage_mix={10: 0.5, 20: 0.5}, progress=lambda _: None)
    assert summary["agg_trades"] == pytest.approx(50_000, rel=0.001)
    assert (tmp_path / UM / "daily/klines/ETHUSDT/1m/ETHUSDT-1m-2024-09-01.zip").exists()
    by_lev = (tmp_path / "simulator" / "ETHUSDT-open-positions-by-leverage-1h.csv").read_text()
    assert {line.split(",")[2] for line in by_lev.splitlines()[1:]} == {"10", "20"}
    liquidated = {row["leverage"] for row in csv.DictReader((tmp_path / "simulator" / "ETHUSDT-liquidations.csv").open())}
    assert liquidated and liquidated <= {"10", "20"}


def test_funding_mark_and_summary(sim):
    funding = q(sim, "SELECT calc_time, funding_interval_hours, last_funding_rate FROM read_csv({fundingRate})")
    assert [r[0] for r in funding] == [1725148800000 + i * 28_800_000 for i in range(DAYS * 3)]
    assert all(r[1] == 8 and abs(r[2]) <= 0.0075 for r in funding)
    assert len({r[2] for r in funding}) > 1
    basis = q(sim, """SELECT max(abs(m.close / k.close - 1)), max(m.volume), count(*) FROM read_csv({markPriceKlines}) m
        JOIN read_csv({klines}) k USING (open_time)""")
    assert basis[0][0] < 0.003 and basis[0][1] == 0 and basis[0][2] == DAYS * 1440
    daily_vol = q(sim, "SELECT stddev(ln(close / open)) * sqrt(1440) FROM read_csv({klines})")[0][0]
    assert 0.01 < daily_vol < 0.08  # BTC-like: a few percent a day
    summary = sim[1]
    assert 40_000 < summary["final_price"] < 120_000 and summary["positions_opened"] > summary["liquidations"]

"""Deterministic Binance USD-M futures market simulator writing data.binance.vision-style files.

A population of leveraged positions drives open interest, funding, trades and price; a position is
liquidated when the mark price crosses its Binance isolated-margin liquidation price.
Python steps minutes with heaps (never scanning all positions); DuckDB expands each day into seeded
background trades and writes aggTrades and the 1m klines aggregated from them (equal by construction).

Every contract has a long and a short side. The leveraged speculators' long and short
books differ (their long share follows sentiment, momentum and funding); unleveraged market makers /
hedgers hold the difference as one netted inventory (one-way mode nets an account's sides), never
liquidated, no stop. So open interest = speculator longs + market-maker longs = speculator shorts +
market-maker shorts, exactly (integers). They make the speculators' taker trades, so they add no
trades; what they charge for the imbalance is the funding premium. A test bench shares none of the
models' assumptions (issue 28), only Binance's liquidation formula: it reads nothing under sql/, has
its own brackets, leverage grid and mix, and draws stop-losses per position. Output is defined
independently of the DuckDB version: md5() draws (not hash()), integer ticks / 0.001 coins / sums.
"""
import datetime as dt
import hashlib
import heapq
import json
import math
import random
import shutil
import tempfile
import zipfile
from collections import Counter, namedtuple
from itertools import pairwise
from pathlib import Path
from statistics import NormalDist

import duckdb

# The simulator's own BTCUSDT brackets (notional cap USDT, max leverage, maintenance margin rate, "cum"
# USDT): Binance's table of 2021-03-18 (announcement "Updates to Leverage and Margin Tiers of Binance
# Futures Contracts"; last tier open-ended, capped here), not the newer one the models read: Binance
# changes it over time, and a bench sharing the models' brackets could not show what a wrong one costs.
# cum_n = cum_(n-1) + floor_n x (MMR_n - MMR_(n-1)), floor_n = the previous cap.
BRACKETS = ((50e3, 125, 0.004, 0.0), (250e3, 100, 0.005, 50.0), (1e6, 50, 0.01, 1_300.0),
            (10e6, 20, 0.025, 16_300.0), (20e6, 10, 0.05, 266_300.0), (50e6, 5, 0.10, 1_266_300.0),
            (100e6, 4, 0.125, 2_516_300.0), (200e6, 3, 0.15, 5_016_300.0), (300e6, 2, 0.25, 25_016_300.0),
            (500e6, 1, 0.50, 100_016_300.0))
# The traders' leverage grid (1-125x slider picks), none a model tier (2, 5, 10, 20, 50, 100, 125): a
# model must approximate the traders' leverage, never share it exactly.
LEVERAGES = (1, 3, 4, 6, 8, 12, 15, 25, 30, 40, 60, 75, 90, 110)
PARAMS = {  # every knob; written to simulator/params.json
    "start_price_usd": 60_000, "daily_vol": 0.025,  # BTC daily volatility is typically 2-4 %
    "garch_alpha": 0.03, "garch_beta": 0.966,  # GARCH(1,1) on 1-minute log returns: vol clusters
    "anchor_price_usd": 66_000, "anchor_per_min": 6e-5,  # weak pull: a month stays within ~50k-120k
    "burn_in_days": 4, "burn_in_anchor_per_min": 2e-3,  # fill the book first, price held near start
    "jumps_per_day": 0.3, "jump_sd": 0.012,  # rare news jumps, N(0, jump_sd) log return
    "basis_ar": 0.98, "basis_sd": 5e-5,  # mark/last basis AR(1): stationary sd ~0.025 %
    "impact_per_usd": 4e-11,  # net liquidated USD pushes the next minute's log return: cascades
    "target_open_usd": 6e9, "oi_mood_sd": 0.25, "oi_mood_half_life_h": 72,  # open notional drifts
    "notional_median_usd": 100e3, "notional_sigma": 1.8, "notional_cap_usd": 20e6,  # lognormal sizes
    "hold_mean_h_at_5x": 96, "hold_lev_exp": 0.5,  # exponential hold, mean x (5 / leverage)^exp
    # a stop-loss with a chance linear in log leverage, 60 % at 1x to 78 % at 125x (~0.65-0.75 over a
    # mix; none of the fit's 0, 0.5, 0.8, 0.95), at a Beta(3, 2) share of the way entry -> LP in 10-95 %
    "stop_share_at_1x": 0.6, "stop_share_at_125x": 0.78, "stop_way_beta": (3, 2), "stop_way_range": (0.1, 0.95),
    "leverage_median": (8, 40), "leverage_sigma": (0.6, 1.1),  # per seed: log-uniform median, log sd
    "mood_half_life_h": 24, "mood_weight": 0.05, "momentum_weight": 0.05,  # long share of openings
    "funding_feedback": 100,  # ... minus this x the funding rate (funding deters the crowded side)
    "funding_base": 1e-4, "funding_k": 0.002, "funding_cap": 0.0075, "top_trader_quantile": 0.8,
    "min_trades_per_min": 4}  # >= 4: background trades at the open, high, low and close
Pos = namedtuple("Pos", "pid side lev entry qty lp top")  # side +-1, entry in 0.1 ticks, qty in 0.001


def leverage_mix_for_seed(seed, p=PARAMS):
    """The traders' share of openings per leverage for one seed, both sides: a log-normal (median log-uniform
    in p["leverage_median"], log sd uniform in p["leverage_sigma"]) binned onto LEVERAGES (edges at geometric
    midpoints), each bin's mass x Gamma(4, 1/4) popularity noise. Its own stream (a string seed is hashed
    with sha512: stable across Python versions), so the market's draws do not move with it."""
    rng = random.Random(f"leverage-mix-{seed}")
    lo, hi = (math.log(x) for x in p["leverage_median"])
    dist = NormalDist(rng.uniform(lo, hi), rng.uniform(*p["leverage_sigma"]))
    logs = [math.log(lev) for lev in LEVERAGES]
    edges = [-math.inf, *((a + b) / 2 for a, b in pairwise(logs)), math.inf]
    draws = [(dist.cdf(b) - dist.cdf(a)) * rng.gammavariate(4, 0.25) for a, b in pairwise(edges)]
    mix = {lev: round(x / sum(draws), 4) for lev, x in zip(LEVERAGES, draws, strict=True)}
    return {lev: w for lev, w in mix.items() if w > 0}


def stop_probability(lev, p=PARAMS):
    """The chance that a position at this leverage carries a stop-loss: linear in log leverage."""
    a, b = p["stop_share_at_1x"], p["stop_share_at_125x"]
    return a + (b - a) * math.log(lev) / math.log(125)


def bracket(notional_usd):
    """The bracket row for one position's own notional (never the total open interest)."""
    return next((b for b in BRACKETS if notional_usd <= b[0]), BRACKETS[-1])


def liq_price(side, entry, qty, lev):
    """Binance isolated one-way LP, from wallet + uPnL = notional * MMR - cum."""
    _, _, mmr, cum = bracket(entry * qty)
    if side > 0:
        return (entry * (1 - 1 / lev) - cum / qty) / (1 - mmr)
    return (entry * (1 + 1 / lev) + cum / qty) / (1 + mmr)


class Market:
    """The price path and the book of open positions, advanced one minute at a time."""

    def __init__(self, seed, leverage_mix, p):
        self.rng, self.p, self.mix, self.var = random.Random(seed), p, leverage_mix, p["daily_vol"] ** 2 / 1440
        self.omega = self.var * (1 - p["garch_alpha"] - p["garch_beta"])  # so the long-run variance is var
        self.close, self.logp = round(p["start_price_usd"] * 10), math.log(p["start_price_usd"])
        self.anchor, self.log_p0 = p["burn_in_anchor_per_min"], self.logp
        self.basis, self.push, self.mood, self.oi_mood, self.mom = 0, 0, 0, 0, 0
        self.open, self.book, self.heaps, self.next_pid, self.stops = {}, Counter(), {"due": []}, 0, 0
        median, sigma = p["notional_median_usd"], p["notional_sigma"]
        self.top_usd = median * math.exp(sigma * NormalDist().inv_cdf(p["top_trader_quantile"]))
        self.hold_min = {lev: p["hold_mean_h_at_5x"] * 60 * (5 / lev) ** p["hold_lev_exp"] for lev in leverage_mix}
        hold_min = sum(w * self.hold_min[lev] for lev, w in leverage_mix.items()) / sum(leverage_mix.values())
        self.base_rate = p["target_open_usd"] / (median * math.exp(sigma**2 / 2)) / hold_min  # openings/min

    def _price(self):
        """Last-price OHLC of one minute in ticks: GARCH(1,1) return + liquidation push + jump, then
        high/low drawn as the extremes of a Brownian bridge open -> close (reflection principle:
        P(max > m) = exp(-2 m (m - x) / sd^2)), so the range is consistent with the path."""
        p, rng, sd = self.p, self.rng, math.sqrt(self.var)
        jump = rng.gauss(0, p["jump_sd"]) if rng.random() < p["jumps_per_day"] / 1440 else 0
        r = sd * rng.gauss(0, 1) + self.push + jump - self.anchor * (self.logp - self.log_p0)
        self.var = self.omega + p["garch_alpha"] * r * r + p["garch_beta"] * self.var
        o, self.logp = self.close, self.logp + r
        c = self.close = round(math.exp(self.logp) * 10)
        x = math.log(c / o)
        hi, lo = ((x + s * math.sqrt(x * x - 2 * sd * sd * math.log(1 - rng.random()))) / 2 for s in (1, -1))
        return o, max(o, c, round(o * math.exp(hi))), min(o, c, round(o * math.exp(lo))), c, sd

    def _trade(self, pos, ev, t_ms, price, sign):
        """Book an opening (sign 1) or closing (-1) in the O(1) aggregates (ints: counts, 0.001 coins,
        USD*1e4 at entry) and emit its taker trade: (ms inside the minute, ticks, qty, buyer is maker,
        underlying trades ~ one per 50k USDT). Opening a long or closing a short is a taker buy."""
        for key, val in (("n", 1), ("qty", pos.qty), ("usd", pos.qty * pos.entry), ("top", pos.top)):
            self.book[key, pos.side] += sign * val
        self.book["lev", pos.side, pos.lev] += sign * pos.qty * pos.entry
        fills = 1 + min(199, pos.qty * price // 500_000_000)
        ev.append((t_ms + 1 + self.rng.randrange(59998), price, pos.qty, sign * pos.side < 0, fills))

    def _push(self, kind, pos, level):
        # key -side*level: longs pop highest level first, shorts lowest; lazy deletion via self.open
        heapq.heappush(self.heaps.setdefault((kind, pos.side), []), (-pos.side * level, pos.pid, level))

    def _enter(self, t_ms, lo, hi, ev, p_long):
        """Open one position: heavy-tailed (lognormal, capped) notional, exponential holding time."""
        p, rng = self.p, self.rng
        side, lev = 1 if rng.random() < p_long else -1, rng.choices(list(self.mix), list(self.mix.values()))[0]
        usd = min(p["notional_cap_usd"], p["notional_median_usd"] * math.exp(p["notional_sigma"] * rng.gauss(0, 1)))
        entry = rng.randint(lo, hi)  # a random price inside the minute's range
        qty = max(1, int(usd / entry * 1e4))  # floor: never above the notional cap (and its bracket)
        close_ms = t_ms + 60_000 * (1 + int(rng.expovariate(1 / self.hold_min[lev])))
        if lev > (cap := bracket(qty * entry / 1e4)[1]):  # Binance caps leverage per bracket: the trader
            lev = max((x for x in self.mix if x <= cap), default=max(x for x in LEVERAGES if x <= cap))
        lp = liq_price(side, entry / 10, qty / 1000, lev)
        pos = Pos(self.next_pid, side, lev, entry, qty, lp, usd > self.top_usd)
        self.open[pos.pid], self.next_pid = pos, self.next_pid + 1
        self._push("liq", pos, pos.lp)
        if rng.random() < stop_probability(lev, p):
            (a, b), way = p["stop_way_range"], rng.betavariate(*p["stop_way_beta"])
            self._push("stop", pos, entry / 10 + (pos.lp - entry / 10) * (a + (b - a) * way))
            self.stops += 1
        heapq.heappush(self.heaps["due"], (close_ms, pos.pid))
        self._trade(pos, ev, t_ms, entry, 1)

    def minute(self, t_ms):
        """Advance one minute; returns (o, h, l, c, sd), mark ohlc, trade events, liquidations."""
        p, rng = self.p, self.rng
        o, h, lo, c, _ = bar = self._price()
        self.basis = p["basis_ar"] * self.basis + rng.gauss(0, p["basis_sd"])
        mark = [round(x * (1 + self.basis)) for x in (o, h, lo, c)]  # mark = last x (1 + basis)
        ev, liqs, net_usd = [], [], 0.0
        # liquidations on the MARK range, then stop-losses on the last price; a minute that crosses
        # both a stop and the LP counts as blowing through the stop (fast markets), so liquidate first
        for kind, side, bound in (("liq", 1, mark[2]), ("liq", -1, mark[1]), ("stop", 1, lo), ("stop", -1, h)):
            heap = self.heaps.get((kind, side), [])
            while heap and heap[0][0] <= -side * bound / 10:
                _, pid, level = heapq.heappop(heap)
                if (pos := self.open.pop(pid, None)) is None:
                    continue
                basis = self.basis if kind == "liq" else 0  # mark level -> last-price fill in range
                fill = min(h, max(lo, round(level * 10 / (1 + basis))))
                self._trade(pos, ev, t_ms, fill, -1)
                if kind == "liq":
                    net_usd += side * pos.qty * fill / 1e4
                    liqs.append((ev[-1][0], pos, round(pos.entry * (1 - side / pos.lev)), fill))  # bankruptcy
        self.push = max(-0.05, min(0.05, -p["impact_per_usd"] * net_usd))  # long liqs = market sells
        while (due := self.heaps["due"]) and due[0][0] < t_ms + 60_000:
            if (pos := self.open.pop(heapq.heappop(due)[1], None)) is not None:
                self._trade(pos, ev, t_ms, rng.randint(lo, h), -1)
        # slow AR(1) sentiment + 1-hour momentum - funding set the long share; OI mood the target
        for name, half_life_h in (("mood", p["mood_half_life_h"]), ("oi_mood", p["oi_mood_half_life_h"])):
            a = 0.5 ** (1 / (60 * half_life_h))
            setattr(self, name, a * getattr(self, name) + math.sqrt(1 - a * a) * rng.gauss(0, 1))
        self.mom = self.mom * (1 - 1 / 60) + math.log(c / o)
        p_long = (0.5 + p["mood_weight"] * math.tanh(self.mood) + p["momentum_weight"] * math.tanh(self.mom / 0.01)
                  - p["funding_feedback"] * self.funding_rate())
        target = p["target_open_usd"] * math.exp(p["oi_mood_sd"] * self.oi_mood)
        fill_ratio = (self.book["usd", 1] + self.book["usd", -1]) / 1e4 / target
        rate = self.base_rate * min(3, max(0.2, 1 + 2 * (1 - fill_ratio)))  # relax towards the target
        for _ in range(int(rng.gammavariate(rate, 1) + 0.5)):  # mean and variance = rate, like Poisson
            self._enter(t_ms, lo, h, ev, p_long)
        return bar, mark, ev, liqs

    def open_interest(self):
        """(open interest, market makers' long, market makers' short) in 0.001 coins: the market makers
        hold the speculators' imbalance, so both sides sum to the same open interest (module docstring)."""
        lq, sq = self.book["qty", 1], self.book["qty", -1]
        return max(lq, sq), max(0, sq - lq), max(0, lq - sq)

    def funding_rate(self):
        """Binance funding = interest (0.01 %) + premium, capped; the premium (mark above index) is what
        the market makers charge to hold the speculators' imbalance: proportional to it."""
        lq, sq, cap = self.book["qty", 1], self.book["qty", -1], self.p["funding_cap"]
        return max(-cap, min(cap, self.p["funding_base"] + self.p["funding_k"] * (lq - sq) / max(1, lq + sq)))


def _fix(n, unit):
    """A non-negative integer count of 1/unit (unit 10, 100, 1000, ...) as exact decimal text."""
    return f"{n // unit}.{n % unit:0{len(str(unit)) - 1}d}"


def _px(ticks):
    return _fix(ticks, 10)


def _usd(e4):  # USD x 1e4 (0.001 coins x 0.1 ticks) -> cents, rounded half up
    return _fix((e4 + 50) // 100, 100)


def _utc(ms, fmt="%Y-%m-%d %H:%M:%S"):
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime(fmt)


def _csv(rows):
    return "".join(",".join(map(str, row)) + "\n" for row in rows)


def _ratio(a, b):
    return f"{a / b:.5f}" if b else "0"


KLINES = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
          "taker_buy_quote_volume,ignore")
HEADERS = {
    "aggTrades": "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
    "klines": KLINES, "markPriceKlines": KLINES, "fundingRate": "calc_time,funding_interval_hours,last_funding_rate",
    "metrics": "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
               "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio",
    "liquidationSnapshot": "time,side,order_type,time_in_force,original_quantity,price,average_price,order_status,"
                           "last_fill_quantity,accumulated_fill_quantity"}
TRUTH = {  # simulator/{symbol}-{name}.csv: the speculators' positions (notional at entry), market makers, OI
    "open-positions-1h": "time,long_notional_usd,short_notional_usd,long_positions,short_positions,long_quantity,"
                         "short_quantity,market_maker_long_quantity,market_maker_short_quantity,open_interest_quantity",
    "open-positions-by-leverage-1h": "time,side,leverage,notional_usd",
    "liquidations": "time,side,leverage,entry_price,quantity,liquidation_price,bankruptcy_price,fill_price"}


def publish(out_dir, kind, symbol, date, body):
    """Write the Vision file data/futures/um/{daily|monthly}/{kind}/{symbol}[/1m]/NAME.zip holding one
    NAME.csv (fixed timestamps: reruns are byte-identical) and NAME.zip.CHECKSUM "<sha256>  NAME.zip";
    date is YYYY-MM-DD or YYYY-MM; body is a header-less CSV file or a list of rows."""
    sub, tag = (f"{symbol}/1m", "1m") if kind.endswith("lines") else (symbol, kind)
    path = Path(out_dir, "data/futures/um", "monthly" if len(date) == 7 else "daily", kind, sub,
                f"{symbol}-{tag}-{date}.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo(path.stem + ".csv", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
    with zipfile.ZipFile(path, "w") as zf, zf.open(info, "w", force_zip64=True) as out:
        out.write(f"{HEADERS[kind]}\n".encode())
        if isinstance(body, Path):
            with body.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        else:
            out.write(_csv(body).encode())
    with path.open("rb") as f:
        Path(f"{path}.CHECKSUM").write_text(f"{hashlib.file_digest(f, 'sha256').hexdigest()}  {path.name}\n")
    return path


# Background trades: the first at the open, the last at the close, one each at the high and the low
# (so OHLC is the simulated path's), the rest uniform in the range; Pareto(1.5) sizes; the taker side
# leans with the candle. Each trade's md5 (a fixed standard, unlike hash(), which changes between
# DuckDB versions) gives five 24-bit uniforms u(r, 0..4). Prices stay integer ticks p, quantities
# integer 0.001 coins q, sums integer (exact in any order or thread schedule), text made by fix().
# Only pow() (libm) is floating point beyond + - * /; floor() of it flips only on exact ties.
DAY_SQL = """
CREATE OR REPLACE MACRO u(r, i) AS ('0x' || substr(r, 6 * i + 1, 6))::BIGINT::DOUBLE / 16777216;
CREATE OR REPLACE MACRO fix(x, d) AS
    (x // d)::VARCHAR || '.' || lpad((x % d)::VARCHAR, (length(d::VARCHAR) - 1)::INTEGER, '0');
CREATE OR REPLACE TABLE t AS
WITH m AS (SELECT *, md5(concat_ws(',', {seed}, t, k)) AS r FROM (SELECT *, unnest(range(n)) AS k FROM read_csv(
    '{tmp}/m.csv', header = false, columns =
    {{'t': 'BIGINT', 'o': 'BIGINT', 'h': 'BIGINT', 'l': 'BIGINT', 'c': 'BIGINT', 'n': 'BIGINT'}}))),
x AS (SELECT CASE k WHEN 0 THEN t WHEN n - 1 THEN t + 59999 ELSE t + 1 + floor(u(r, 0) * 59998) END::BIGINT AS ts,
    CASE k WHEN 0 THEN o WHEN n - 1 THEN c WHEN 1 THEN h WHEN 2 THEN l
        ELSE l + floor(u(r, 1) * (h - l + 1)) END::BIGINT AS p,
    least(5000, floor(2 * pow(1 - u(r, 2), -1 / 1.5)))::BIGINT AS q,
    u(r, 3) >= 0.5 + 0.2 * (c - o)::DOUBLE / (h - l + 1) AS ibm, (1 + floor(3 * u(r, 4)))::BIGINT AS fills,
    0 AS src, k AS seq
  FROM m UNION ALL SELECT ts, p, q, ibm, fills, 1, seq FROM read_csv('{tmp}/e.csv', header = false, columns =
    {{'ts': 'BIGINT', 'p': 'BIGINT', 'q': 'BIGINT', 'ibm': 'BOOLEAN', 'fills': 'BIGINT', 'seq': 'BIGINT'}}))
SELECT {agg0} + row_number() OVER w AS agg_trade_id, p, q,
  {trade0} + sum(fills) OVER w - fills + 1 AS first_trade_id, {trade0} + sum(fills) OVER w AS last_trade_id,
  ts AS transact_time, ibm AS is_buyer_maker
FROM x WINDOW w AS (ORDER BY ts, src, seq ROWS UNBOUNDED PRECEDING);
COPY (SELECT agg_trade_id, fix(p, 10), fix(q, 1000), first_trade_id, last_trade_id, transact_time, is_buyer_maker
  FROM t ORDER BY agg_trade_id) TO '{tmp}/a.csv' (HEADER false);
COPY (SELECT transact_time // 60000 * 60000 AS ot, fix(arg_min(p, agg_trade_id), 10), fix(max(p), 10),
    fix(min(p), 10), fix(arg_max(p, agg_trade_id), 10), fix(sum(q), 1000), ot + 59999, fix(sum(p * q), 10000),
    sum(last_trade_id - first_trade_id + 1), fix(coalesce(sum(q) FILTER (NOT is_buyer_maker), 0), 1000),
    fix(coalesce(sum(p * q) FILTER (NOT is_buyer_maker), 0), 10000), 0
  FROM t GROUP BY ot ORDER BY ot) TO '{tmp}/k.csv' (HEADER false);
"""


def _day_trades(con, tmp, seed, ids, bars, evs, trades_per_day, min_per_min):
    """Write the day's aggTrades and klines CSVs to tmp; returns taker (buy, sell) qty per 5-min label."""
    remaining, sd_sum = max(0, trades_per_day - len(evs)), sum(bar[4] for _, bar, _ in bars)
    (tmp / "m.csv").write_text(_csv((t, *bar[:4], max(min_per_min, round(remaining * bar[4] / sd_sum)))
                                    for t, bar, _ in bars))  # background activity follows volatility
    (tmp / "e.csv").write_text(_csv((*e[:3], str(e[3]).lower(), e[4], i) for i, e in enumerate(evs)))
    con.execute(DAY_SQL.format(seed=int(seed), tmp=tmp, **ids))
    n_agg, ids["trade0"] = con.execute("SELECT count(*), max(last_trade_id) FROM t").fetchone()
    ids["agg0"] += n_agg
    return {lb: (buy, sell) for lb, buy, sell in con.execute(
        "SELECT (transact_time // 300000 + 1) * 300000, coalesce(sum(q) FILTER (NOT is_buyer_maker), 0),"
        " coalesce(sum(q) FILTER (is_buyer_maker), 0) FROM t GROUP BY 1").fetchall()}  # integers: exact


def simulate(out_dir, days=30, seed=1, symbol="BTCUSDT", trades_per_day=20_000,
             start="2024-09-01", leverage_mix=None, progress=print) -> dict:
    """Simulate `days` UTC days from `start`; write Vision-layout files and ground truth to out_dir."""
    mix, p, s, tmp_dir = leverage_mix or leverage_mix_for_seed(seed), PARAMS, symbol, tempfile.TemporaryDirectory()
    mkt, con, tmp = Market(seed, mix, p), duckdb.connect(), Path(tmp_dir.name)
    start_ms = int(dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC).timestamp() * 1000)
    end_ms, files, snaps, taker, funding, hourly, by_lev = start_ms + days * 86_400_000, [], {}, {}, {}, [], []
    ids, bars, evs, liqs, truth, pid0, stops0 = Counter(agg0=0, trade0=0), [], [], [], [], 0, 0
    for t_ms in range(start_ms - p["burn_in_days"] * 86_400_000, end_ms, 60_000):
        if t_ms == start_ms:  # burn-in over: count positions from here, loosen the price anchor
            pid0, stops0, mkt.anchor = mkt.next_pid, mkt.stops, p["anchor_per_min"]
            mkt.log_p0 = math.log(p["anchor_price_usd"])
        bar, mark, ev, lq = mkt.minute(t_ms)
        label, b = t_ms + 60_000, mkt.book  # state at the END of this minute
        if label < start_ms:
            continue
        if t_ms >= start_ms:
            bars.append((t_ms, bar, mark))
            evs.extend(ev)
            liqs.extend(lq)
        # metrics: label = END of each 5-minute period, D 00:00 .. D+1 00:00 = 289 rows, the last one
        # repeated in the next file as in the real files. Open interest counts speculators and market
        # makers (longs = shorts); the ratios describe traders, as Binance's do, so they are the
        # speculators' alone: count_toptrader counts positions above the size distribution's 80th
        # percentile (~ the largest 20 %), sum_toptrader is long / short quantity of all speculators'
        # positions, count_long_short accounts. The run's first row has no trades before it (1.0).
        oi, mm_long, mm_short = mkt.open_interest()  # 0.001 coins
        if label % 300_000 == 0:  # OI value at the minute's close (last price)
            snaps[label] = (_utc(label), s, _fix(oi, 1000), _usd(oi * bar[3]),
                            *(_ratio(b[k, 1], b[k, -1]) for k in ("top", "qty", "n")))
        if label % 3_600_000 == 0:  # ground truth: speculators' notional at entry; quantities
            iso = _utc(label, "%Y-%m-%dT%H:%M:%SZ")
            hourly.append((iso, _usd(b["usd", 1]), _usd(b["usd", -1]), b["n", 1], b["n", -1],
                           *(_fix(x, 1000) for x in (b["qty", 1], b["qty", -1], mm_long, mm_short, oi))))
            by_lev += [(iso, "long" if k[1] > 0 else "short", k[2], _usd(b[k])) for k in sorted(b) if k[0] == "lev"]
        if label < end_ms and label % 28_800_000 == 0:  # BTCUSDT funds every 8 h
            funding.setdefault(_utc(label, "%Y-%m"), []).append((label, 8, f"{mkt.funding_rate():.8f}"))
        if label == start_ms or (label - start_ms) % 86_400_000:
            continue
        day, n_agg = _utc(t_ms, "%Y-%m-%d"), ids["agg0"]  # a day is done: write its files
        taker.update(_day_trades(con, tmp, seed, ids, bars, evs, trades_per_day, p["min_trades_per_min"]))
        liqs.sort(key=lambda r: r[0])
        for kind, body in (
                ("aggTrades", tmp / "a.csv"), ("klines", tmp / "k.csv"),
                ("markPriceKlines", [(t, *map(_px, mk), 0, t + 59999, 0, 0, 0, 0, 0) for t, _, mk in bars]),
                ("metrics", [(*row, _ratio(*taker.get(lb, (1, 1)))) for lb, row in sorted(snaps.items())]),
                ("liquidationSnapshot", [(t, "SELL" if pos.side > 0 else "BUY", "LIMIT", "IOC", _fix(pos.qty, 1000),
                                          _px(bp), _px(fill), "FILLED", *[_fix(pos.qty, 1000)] * 2)
                                         for t, pos, bp, fill in liqs])):
            files.append(publish(out_dir, kind, s, day, body))
        truth += [(t, "long" if pos.side > 0 else "short", pos.lev, _px(pos.entry), _fix(pos.qty, 1000), f"{pos.lp:.2f}",
                   _px(bp), _px(fill)) for t, pos, bp, fill in liqs]
        progress(f"simulated {s} {day}: {ids['agg0'] - n_agg} aggTrades, {len(liqs)} liquidations, "
                 f"close {_px(bar[3])}, {len(mkt.open)} open positions")
        snaps, taker, bars, evs, liqs = {label: snaps[label]}, {label: taker.get(label, (1, 1))}, [], [], []
    files += [publish(out_dir, "fundingRate", s, month, rows) for month, rows in funding.items()]
    sim_dir = Path(out_dir, "simulator")
    sim_dir.mkdir(parents=True, exist_ok=True)
    for (name, header), rows in zip(TRUTH.items(), (hourly, by_lev, truth), strict=True):
        (sim_dir / f"{s}-{name}.csv").write_text(f"{header}\n{_csv(rows)}")
    params = {"seed": seed, "days": days, "start": start, "symbol": s, "trades_per_day": trades_per_day,
              "leverage_mix": {str(k): v for k, v in mix.items()}, "brackets": BRACKETS, **p}
    (sim_dir / "params.json").write_text(json.dumps(params, indent=1) + "\n")
    con.close()
    tmp_dir.cleanup()
    return {"out_dir": str(out_dir), "files_written": len(files), "agg_trades": ids["agg0"],
            "positions_opened": mkt.next_pid - pid0, "positions_with_stop": mkt.stops - stops0,
            "positions_open": len(mkt.open), "liquidations": len(truth), "final_price": mkt.close / 10}

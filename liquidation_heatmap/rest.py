"""Binance's REST API -> today's files so far (`fetch --today`): what data.binance.vision publishes only a day
later, page by page from the start of the day (or --start) up to now, in the Vision layout and columns, each
named NAME.partial.csv beside the zip that Binance's file will be. Discovery (files.py) reads a partial file
until Binance's own file is there; `fetch` then removes it. A rerun extends each file with what is new.

Binance's limits are kept: each page within its endpoint's limit, the request weight used this minute (its
X-MBX-USED-WEIGHT-1M header) kept under the budget by waiting for the next minute, a 429 or 418 answered by
waiting its Retry-After (a long ban stops the run), 5xx and dropped connections retried with backoff."""

from __future__ import annotations

import datetime as dt
import functools
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .fetch import FETCH_TIMEOUT_S, fetch_paths, fetch_types, with_retries
from .files import parse_file_name, partial_path
from .project import BuildError, log
from .simulate import HEADERS
from .source_file import SourceFile

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .options import FetchOptions

REST_URL = "https://fapi.binance.com"
WEIGHT_LIMIT = 2400        # Binance's request weight per minute and IP address
WEIGHT_HEADROOM = 0.9      # a request that would take this minute past this share of it waits for the next minute
WEIGHT_WINDOW_S = 60.0     # the minute the weight is counted in
MAX_RETRY_AFTER_S = 300    # a longer Retry-After (a 418 ban lasts minutes to days) stops the run
DAY_MS, HOUR_MS = 86_400_000, 3_600_000
METRICS_REACH_MS = 30 * DAY_MS   # openInterestHist and the ratio endpoints answer for the latest 30 days only
# Rows per request, each endpoint's most
PAGE_LIMITS = {"klines": 1500, "aggTrades": 1000, "fundingRate": 1000, "metrics": 500}
AGG_TRADES_WEIGHT = 20
# The metrics file's ratio columns, in its order, and the endpoint and field each is read from.
RATIO_COLUMNS = {"count_toptrader_long_short_ratio": ("/futures/data/topLongShortAccountRatio", "longShortRatio"),
                 "sum_toptrader_long_short_ratio": ("/futures/data/topLongShortPositionRatio", "longShortRatio"),
                 "count_long_short_ratio": ("/futures/data/globalLongShortAccountRatio", "longShortRatio"),
                 "sum_taker_long_short_vol_ratio": ("/futures/data/takerlongshortRatio", "buySellRatio")}


class RestError(BuildError):
    """An answer other than the data asked for, after the retries; names the URL."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def kline_weight(limit: int) -> int:
    """Binance's weight of a klines request, which grows with its limit."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class RestClient:
    """GETs of Binance's REST API within its weight budget, retried as Binance asks."""

    def __init__(self, base_url: str, tries: int, delay_s: float):
        self.base, self.tries, self.delay_s = base_url.rstrip("/"), tries, delay_s
        self.used_weight, self.used_window = 0, -1   # as the last answer's header said, and in which minute

    def pace(self, weight: int) -> None:
        """Wait for the next minute when this request would take the weight used in this one past the headroom."""
        now = time.time()
        window = int(now // WEIGHT_WINDOW_S)
        if window == self.used_window and self.used_weight + weight > WEIGHT_LIMIT * WEIGHT_HEADROOM:
            wait_s = (window + 1) * WEIGHT_WINDOW_S - now + 0.05
            log(f"{self.used_weight} of Binance's {WEIGHT_LIMIT} request weight used this minute: waiting {wait_s:.1f} s")
            time.sleep(wait_s)

    def note_weight(self, headers) -> None:
        used = headers.get("X-MBX-USED-WEIGHT-1M") if headers else None
        if used and used.isdigit():
            self.used_weight, self.used_window = int(used), int(time.time() // WEIGHT_WINDOW_S)

    def get_once(self, url: str, weight: int):
        self.pace(weight)
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            self.note_weight(response.headers)
            body = response.read()
        try:
            return json.loads(body)
        except ValueError as error:
            raise RestError(f"{url}: not JSON ({body[:120]!r})") from error

    def get(self, path: str, weight: int = 1, **params):
        """The JSON answer of path?params; a RestError naming the URL when Binance keeps refusing or failing."""
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        for attempt in range(1, self.tries + 1):
            try:   # timeouts, dropped connections and 5xx: retried with backoff by with_retries
                return with_retries(lambda: self.get_once(url, weight), self.tries, self.delay_s)
            except urllib.error.HTTPError as error:
                self.note_weight(error.headers)
                said = error.read()[:200].decode(errors="replace")
                if error.code not in (429, 418):
                    raise RestError(f"{url}: HTTP {error.code} {said}", error.code) from error
                # 429: over the limit; 418: banned for ignoring 429s. Both say for how long.
                said_wait = (error.headers.get("Retry-After") or "").strip()   # seconds (Binance never sends a date)
                wait_s = float(said_wait) if said_wait.replace(".", "", 1).isdigit() else self.delay_s * 2 ** attempt
                if wait_s > MAX_RETRY_AFTER_S or attempt == self.tries:
                    raise RestError(f"{url}: HTTP {error.code} from Binance ({said}), Retry-After {wait_s:.0f} s "
                                    f"after {attempt} tries: stopped; run again later", error.code) from error
                log(f"HTTP {error.code} from Binance (too many requests): waiting {wait_s:.1f} s as it asks, {url}")
                time.sleep(wait_s)
            except (OSError, http.client.HTTPException) as error:
                raise RestError(f"{url}: {error or type(error).__name__} (after {self.tries} tries)") from error
        raise AssertionError("unreachable")

    def time_pages(self, path: str, weight: int, limit: int, time_key, start_ms: int, end_ms: int,
                   **params) -> Iterator:
        """The rows of a startTime/endTime endpoint in [start_ms, end_ms), page after page: each page from 1 ms
        past the last row's time, until a page comes back short."""
        cursor = start_ms
        while cursor < end_ms:
            page = self.get(path, weight, **params, startTime=cursor, endTime=end_ms - 1, limit=limit)
            yield from (row for row in page if cursor <= int(row[time_key]) < end_ms)
            if len(page) < limit:
                return
            if int(page[-1][time_key]) < cursor:   # a full page that does not move on would be asked for ever
                raise RestError(f"{self.base}{path}: a page of {limit} rows ends before its startTime {cursor}")
            cursor = int(page[-1][time_key]) + 1


def utc_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def period_ms(period: str) -> tuple[int, int]:
    """A day's or a month's first instant and the next one's, as epoch ms."""
    first = dt.datetime.fromisoformat(period if len(period) == 10 else period + "-01").replace(tzinfo=dt.UTC)
    following = first + dt.timedelta(days=1) if len(period) == 10 else (first + dt.timedelta(days=32)).replace(day=1)
    return int(first.timestamp() * 1000), int(following.timestamp() * 1000)


def last_row(path: Path) -> list[str] | None:
    """The fields of a file's last line, read from its end (a day of trades is hundreds of MB); None without rows."""
    if not path.exists():
        return None
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = f.read().decode().splitlines()
    fields = lines[-1].split(",") if lines else []
    return fields if fields and fields[0][:1].isdigit() else None   # a header alone: no rows yet


def extend(path: Path, header: str, rows: Iterator[list]) -> int:
    """Append rows to the file (made with its header if new) through a copy renamed over it: a reader sees the
    file before or after, never half. Rows that arrived before an error are kept: whole rows, in order, so a
    rerun continues after them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.exists():
        shutil.copyfile(path, tmp)
    else:
        tmp.write_text(header + "\n")
    added = 0
    try:
        with tmp.open("a") as out:
            for row in rows:
                out.write(",".join(map(str, row)) + "\n")
                added += 1
    finally:
        if added:
            os.replace(tmp, path)
        else:
            tmp.unlink(missing_ok=True)
    return added


class TodayFetch:
    """One `fetch --today` run: Binance's clock read once (now_ms), then each file filled up to it."""

    def __init__(self, client: RestClient, data: Path):
        self.client, self.data = client, data
        self.now_ms = int(client.get("/fapi/v1/time")["serverTime"])
        self.funding_info: dict[str, int] | None = None

    def fill(self, vision_path: str) -> tuple[str, int]:
        """Extend the partial file standing for one Vision file: (outcome, rows added)."""
        vision = Path(self.data, vision_path)
        info, partial = parse_file_name(vision), partial_path(vision)
        if vision.exists() or vision.with_suffix(".csv").exists():
            partial.unlink(missing_ok=True)   # Binance's own file replaces what the REST API gave
            return "vision", 0
        start_ms, end_ms = period_ms(info.period)
        end_ms = min(end_ms, self.now_ms)
        if info.data_type == "metrics":
            reach_ms = self.now_ms - METRICS_REACH_MS + 60_000
            if end_ms <= reach_ms:
                return "beyond_reach", 0
            start_ms = max(start_ms, reach_ms)
        rows_of = {"metrics": self.metric_rows, "fundingRate": self.funding_rows, "aggTrades": self.agg_trade_rows}
        rows = rows_of.get(info.data_type, self.kline_rows)(info, start_ms, end_ms, last_row(partial))
        return "extended", extend(partial, HEADERS[info.data_type], rows)

    def kline_rows(self, info: SourceFile, start_ms: int, end_ms: int, last: list[str] | None) -> Iterator[list]:
        """Closed bars only: the bar still open at now_ms would be stale in the file."""
        path = "/fapi/v1/klines" if info.data_type == "klines" else "/fapi/v1/markPriceKlines"
        limit = PAGE_LIMITS["klines"]
        for row in self.client.time_pages(path, kline_weight(limit), limit, 0, int(last[0]) + 1 if last else start_ms,
                                          end_ms, symbol=info.symbol, interval=info.kline_interval):
            if row[6] >= end_ms:
                return
            yield row[:12]

    def agg_trade_rows(self, info: SourceFile, start_ms: int, end_ms: int, last: list[str] | None) -> Iterator[list]:
        """By id from the first trade on: a time window may span an hour at most, ids page without gaps."""
        limit, from_id = PAGE_LIMITS["aggTrades"], int(last[0]) + 1 if last else None
        while from_id is None and start_ms < end_ms:   # the first trade: an hour at a time
            page = self.client.get("/fapi/v1/aggTrades", AGG_TRADES_WEIGHT, symbol=info.symbol, startTime=start_ms,
                                   endTime=min(start_ms + HOUR_MS, end_ms) - 1, limit=limit)
            from_id = page[0]["a"] if page else None
            start_ms += HOUR_MS
        pages = 0
        while from_id is not None:
            page = self.client.get("/fapi/v1/aggTrades", AGG_TRADES_WEIGHT, symbol=info.symbol, fromId=from_id,
                                   limit=limit)
            for t in page:
                if t["T"] >= end_ms:
                    return
                yield t["a"], t["p"], t["q"], t["f"], t["l"], t["T"], str(t["m"]).lower()
            if len(page) < limit:
                return
            from_id, pages = page[-1]["a"] + 1, pages + 1
            if pages % 100 == 0:
                log(f"{info.symbol} aggTrades {info.period}: {pages * limit:,} trades so far, up to {utc_text(page[-1]['T'])}")

    def metric_rows(self, info: SourceFile, start_ms: int, end_ms: int, last: list[str] | None) -> Iterator[list]:
        """Open interest every 5 minutes, with the ratios where their endpoints answer (else empty columns)."""
        if last:
            start_ms = int(dt.datetime.fromisoformat(last[0]).replace(tzinfo=dt.UTC).timestamp() * 1000) + 1
        pages = functools.partial(self.client.time_pages, weight=1, limit=PAGE_LIMITS["metrics"], time_key="timestamp",
                                  start_ms=start_ms, end_ms=end_ms, symbol=info.symbol, period="5m")
        open_interest = list(pages("/futures/data/openInterestHist"))
        ratios = {}
        for column, (path, field) in RATIO_COLUMNS.items():
            try:
                ratios[column] = {int(row["timestamp"]): row[field] for row in pages(path)} if open_interest else {}
            except RestError as error:
                if error.status not in (400, 404):
                    raise
                log(f"{info.symbol}: no {column} ({error}); left empty")
                ratios[column] = {}
        for row in open_interest:
            ts = int(row["timestamp"])
            yield (utc_text(ts), info.symbol, row["sumOpenInterest"], row["sumOpenInterestValue"],
                   *(ratios[column].get(ts, "") for column in RATIO_COLUMNS))

    def funding_rows(self, info: SourceFile, start_ms: int, end_ms: int, last: list[str] | None) -> Iterator[list]:
        """The month so far (Binance publishes funding by month): each rate with the hours since the one before,
        the first with the symbol's interval as /fapi/v1/fundingInfo says (8 h unless listed there)."""
        previous = int(last[0]) if last else None
        limit = PAGE_LIMITS["fundingRate"]
        for row in self.client.time_pages("/fapi/v1/fundingRate", 1, limit, "fundingTime", previous + 1 if last else start_ms,
                                          end_ms, symbol=info.symbol):
            ts = int(row["fundingTime"])
            hours = round((ts - previous) / HOUR_MS) if previous else self.funding_interval_hours().get(info.symbol, 8)
            yield ts, hours, row["fundingRate"]
            previous = ts

    def funding_interval_hours(self) -> dict[str, int]:
        """Symbols whose funding interval Binance changed from 8 h, and theirs (asked once a run)."""
        if self.funding_info is None:
            self.funding_info = {row["symbol"]: int(row["fundingIntervalHours"])
                                 for row in self.client.get("/fapi/v1/fundingInfo")}
        return self.funding_info


def fetch_today(options: FetchOptions) -> None:
    """Fill today (UTC, by Binance's clock), or --start to now, from the REST API into partial files under --data."""
    if options.end is not None:
        raise BuildError("--end does not go with --today, which fetches up to now (--start may go back)")
    local_today = dt.datetime.now(dt.UTC).date()
    types = fetch_types(replace(options, start=options.start or local_today, end=max(options.start or local_today,
                                                                                     local_today)))
    if not options.rest_url.startswith(("http://", "https://")):
        raise BuildError(f"--rest-url {options.rest_url}: expected http://... or https://...")
    run = TodayFetch(RestClient(options.rest_url, options.retries, options.retry_delay), options.data)
    today = dt.datetime.fromtimestamp(run.now_ms / 1000, dt.UTC).date()
    start = options.start or today
    if start > today:
        raise BuildError(f"--start {start} is after today ({today} UTC by Binance's clock)")
    paths = fetch_paths(options.symbol, types, options.interval, start, today)
    log(f"fetching {len(paths)} files from {options.rest_url} up to {utc_text(run.now_ms)} UTC into {options.data}")
    outcomes: dict[str, list[str]] = {"extended": [], "vision": [], "beyond_reach": []}
    added = 0
    for done, path in enumerate(paths, 1):
        outcome, rows = run.fill(path)
        name = path.removeprefix("data/futures/um/")
        outcomes[outcome].append(name)
        added += rows
        what = {"extended": f"{rows:,} new rows in its .partial.csv", "vision": "Binance's file is there",
                "beyond_reach": "older than the 30 days openInterestHist answers for"}[outcome]
        log(f"{done}/{len(paths)} {name}: {what}")
    log(f"summary: {added:,} rows added to {len(outcomes['extended'])} partial files, {len(outcomes['vision'])} "
        f"with Binance's file already there, {len(outcomes['beyond_reach'])} beyond the REST API's reach")

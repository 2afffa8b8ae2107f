"""data.binance.vision -> the Vision layout on disk: each file with its CHECKSUM, verified, retried with backoff,
written whole or not at all."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from .archives import checksum_status, sha256
from .files import partial_path
from .project import BuildError, log
from .stage import KLINE_TYPES

if TYPE_CHECKING:   # (options.py reads FETCH_TYPES from here)
    from .options import FetchOptions

VISION_URL = "https://data.binance.vision"


# The types the models read, and how Binance publishes each (fundingRate only as monthly files).
FETCH_TYPES = {"metrics": "daily", "fundingRate": "monthly", "klines": "daily", "markPriceKlines": "daily",
               "aggTrades": "daily"}


FETCH_TIMEOUT_S = 30


SUMMARY_LABELS = {"fetched": "fetched", "skipped": "skipped (already there)", "missing": "missing (404)",
                  "bad": "bad (checksum)", "failed": "failed"}


def fetch_paths(symbols: list[str], types: list[str], interval: str, start: dt.date, end: dt.date) -> list[str]:
    """The Vision path (under the base URL, and under --data) of every file the window needs."""
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    paths = []
    for symbol in symbols:
        for kind in types:
            folder, tag = (f"{symbol}/{interval}", interval) if kind in KLINE_TYPES else (symbol, kind)
            periods = sorted({day[:7] for day in days}) if FETCH_TYPES[kind] == "monthly" else days
            paths += [f"data/futures/um/{FETCH_TYPES[kind]}/{kind}/{folder}/{symbol}-{tag}-{p}.zip" for p in periods]
    return paths


def with_retries(action, tries: int, delay_s: float):
    """Run action, retrying timeouts, dropped connections and 5xx with exponential backoff and jitter."""
    for attempt in range(1, tries + 1):
        try:
            return action()
        except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError and timeouts are OSErrors
            if attempt == tries or isinstance(error, urllib.error.HTTPError) and error.code < 500:
                raise
            time.sleep(delay_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))


def download(url: str, part: Path) -> int:
    """Get url into part, continuing what an earlier attempt left there with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after `have`: part is whole (its checksum will tell)
            return 0
        raise
    with response, part.open("ab" if response.status == 206 else "wb") as out:  # 200: Range ignored, start over
        expected, got = int(response.headers.get("Content-Length", -1)), 0
        while block := response.read(1 << 16):
            out.write(block)
            got += len(block)
    if got < expected:  # urllib returns a short body without complaint when the server hangs up
        raise ConnectionError(f"connection closed after {got:,} of {expected:,} bytes")
    return got


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read().decode(errors="replace")


def fetch_file(url: str, dest: Path, tries: int, delay_s: float) -> tuple[str, str, int]:
    """Fetch one zip and its CHECKSUM into dest: (outcome as in SUMMARY_LABELS, detail, bytes received)."""
    if dest.exists() and checksum_status(dest) == "ok":
        partial_path(dest).unlink(missing_ok=True)   # what `fetch --today` wrote for the period: the zip replaces it
        return "skipped", "", 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, got = dest.with_name(dest.name + ".part"), 0
    try:
        for attempt in (1, 2):  # a zip that fails its CHECKSUM is downloaded once more before it is called bad
            got += with_retries(lambda: download(url, part), tries, delay_s)
            checksum = with_retries(lambda: read_url(url + ".CHECKSUM"), tries, delay_s)
            if checksum.lower().split()[:1] == [sha256(part)]:
                dest.with_name(dest.name + ".CHECKSUM").write_text(checksum)
                os.replace(part, dest)
                partial_path(dest).unlink(missing_ok=True)
                return "fetched", "", got
            if attempt == 1:
                part.unlink()
        # Out of build's sight (it reads only .zip and .csv), together with any older unverified copy.
        os.replace(part, dest.with_name(dest.name + ".bad"))
        dest.unlink(missing_ok=True)
        return "bad", f"sha256 differs from its CHECKSUM twice; kept as {dest.name}.bad", got
    except urllib.error.HTTPError as error:
        return ("missing", "", got) if error.code == 404 else ("failed", f"HTTP {error.code}", got)
    except (OSError, http.client.HTTPException) as error:
        return "failed", str(error) or type(error).__name__, got


def fetch_types(options: FetchOptions) -> list[str]:
    """The --types asked for, after checking every argument (BuildError for the first bad one)."""
    types = [kind.strip() for kind in options.types.split(",") if kind.strip()]
    if not types or set(types) - set(FETCH_TYPES):
        unknown = ", ".join(sorted(set(types) - set(FETCH_TYPES))) or "none given"
        raise BuildError(f"--types {options.types!r}: unknown type ({unknown}); choose from {','.join(FETCH_TYPES)}")
    if options.start is None or options.end is None:
        raise BuildError("--start and --end are needed (or --today: from --start, by default today, up to now)")
    if options.end < options.start:
        raise BuildError(f"--end {options.end} is before --start {options.start}")
    if bad := [symbol for symbol in options.symbol if not re.fullmatch(r"[A-Z0-9]+", symbol)]:
        raise BuildError(f"--symbol {bad[0]}: expected a Binance symbol such as BTCUSDT")
    if not re.fullmatch(r"\d+[smhdwM]", options.interval):
        raise BuildError(f"--interval {options.interval}: expected a Binance interval such as 1m, 5m, 1h")
    if options.jobs < 1 or options.retries < 1 or options.retry_delay < 0:
        raise BuildError("--jobs and --retries must be at least 1, --retry-delay not negative")
    if not options.base_url.startswith(("http://", "https://")):
        raise BuildError(f"--base-url {options.base_url}: expected http://... or https://...")
    return types


def fetch(options: FetchOptions) -> None:
    """Download the window's files with their CHECKSUMs into the Vision layout under --data."""
    paths = fetch_paths(options.symbol, fetch_types(options), options.interval, options.start, options.end)
    base, outcomes, total, began = options.base_url.rstrip("/"), {k: [] for k in SUMMARY_LABELS}, 0, time.perf_counter()
    log(f"fetching {len(paths)} files from {base} into {options.data}")
    pool = ThreadPoolExecutor(options.jobs)
    try:
        jobs = {pool.submit(fetch_file, f"{base}/{path}", Path(options.data, path), options.retries, options.retry_delay):
                path.removeprefix("data/futures/um/") for path in paths}  # kline names alone are ambiguous
        for done, job in enumerate(as_completed(jobs), 1):
            outcome, detail, size = job.result()
            outcomes[outcome].append(jobs[job] + (f" ({detail})" if detail else ""))
            total += size
            rate = total / max(time.perf_counter() - began, 1e-3)
            log(f"{done}/{len(paths)} files, {total / 1e6:.1f} MB at {rate / 1e6:.1f} MB/s: {outcome} {jobs[job]}")
    finally:  # on Ctrl-C, drop the files not yet started rather than wait for all of them
        pool.shutdown(cancel_futures=True)
    log("summary: " + ", ".join(f"{len(outcomes[k])} {label}" for k, label in SUMMARY_LABELS.items()))
    for name in sorted(outcomes["missing"]):
        log(f"missing (Binance has no such file): {name}")
    if failures := sorted(outcomes["bad"] + outcomes["failed"]):
        raise BuildError(f"{len(failures)} of {len(paths)} files not fetched: " + "; ".join(failures))

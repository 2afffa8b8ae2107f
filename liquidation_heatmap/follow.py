"""`build.py follow`: a heatmap that follows the market. Every few minutes (--every), one cycle:

1. Binance's daily files (data.binance.vision) of the last days (--days-back) that it has published: a day's
   files appear some hours after it ends, at no set hour, so each cycle asks again for those still missing (a 404
   is a day not there yet, not an error); a file fetched replaces that day's partial file;
2. the days Binance has not published yet, up to now, from its REST API (`fetch --today`): each partial file
   extended by the rows that are new since the last cycle;
3. an incremental build (liquidation_heatmap/pipeline.py): the previous build's results are kept up to the first
   day whose files changed, so a cycle recomputes today (and a day whose Binance files just arrived), not the
   month. The new SQLite file replaces the old whole, and a running `serve` takes it up without a restart
   (plugins/fresh_database.py).

Killed at any point (kill -9 included), it resumes from its files when started again: every download is written
to a temporary name and renamed, every partial file extended by a rename, every build swapped in whole, so the
next cycle finds either the old file or the new one, never half of one. A cycle that fails (the network down, a
429 that lasts) is logged and the previous database kept; the next cycle tries again."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace

from .fetch import fetch
from .options import BuildOptions, FetchOptions, FollowOptions
from .pipeline import build
from .project import BuildError, log, shown
from .rest import RestClient, fetch_today


def binance_today(options: FollowOptions) -> dt.date:
    """Today (UTC) by Binance's clock, which decides what its REST API has: a machine's clock may be off."""
    client = RestClient(options.rest_url, options.retries, options.retry_delay)
    return dt.datetime.fromtimestamp(int(client.get("/fapi/v1/time")["serverTime"]) / 1000, dt.UTC).date()


def cycle(options: FollowOptions) -> None:
    """Fetch what is new, then build it."""
    today = binance_today(options)
    first = today - dt.timedelta(days=options.days_back)
    fetching = FetchOptions(symbol=options.symbol, start=first, end=today - dt.timedelta(days=1), data=options.data,
                            base_url=options.base_url, rest_url=options.rest_url, interval=options.interval,
                            retries=options.retries, retry_delay=options.retry_delay)
    if options.days_back > 0:
        fetch(fetching)                                     # Binance's files of the days it has published
    fetch_today(replace(fetching, today=True, end=None))    # the rest, from its REST API, up to now
    build(BuildOptions(data=options.data, db=options.db, symbol=options.symbol, start=options.start,
                       liquidations=options.liquidations, memory_limit=options.memory_limit))


def follow(options: FollowOptions) -> None:
    """Cycles every options.every_min minutes (from the start of one to the start of the next; a cycle longer
    than that is followed at once), for ever or options.cycles times."""
    done = 0
    while True:
        began = time.monotonic()
        try:
            cycle(options)
            log(f"follow: cycle {done + 1} done in {time.monotonic() - began:.0f} s: {shown(options.db)} is up to now")
            failed = None
        except BuildError as error:   # (a fetch or a build that failed: the previous database stands)
            log(f"follow: cycle {done + 1} failed, {shown(options.db)} is kept as it was: {error}")
            failed = error
        done += 1
        if options.cycles and done >= options.cycles:
            if failed:   # (run a set number of times, by cron or a timer, the last cycle's failure is the exit status)
                raise failed
            return
        wait_s = max(0.0, began + options.every_min * 60 - time.monotonic())
        next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait_s)
        log(f"follow: next cycle at {next_at:%H:%M:%S} UTC")
        time.sleep(wait_s)

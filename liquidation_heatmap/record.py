"""`build.py record`: Binance USD-M's realized liquidations, as they happen, from the public all-market
stream !forceOrder@arr, into daily files the build reads (recording.py writes them). Binance published
them as liquidationSnapshot files only up to 2024-03-31: this is how today's data gets realized liquidations.

The stream replays nothing: any time it is not received is a gap, and each is written to the gaps sidecar
with its reason (a dropped connection, the recorder not running, a line cut short at a kill). A dropped
connection is opened again at once, then with exponential backoff plus jitter, capped. Binance closes every
connection after 24 hours: before that (--renew-after), a new connection is opened and read alongside the
old one for a moment before the old one is closed, so a renewal leaves no gap; the events both carry are
written once (recording.Recording.add). SIGTERM and SIGINT stop it cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import math
import os
import random
import re
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from .project import BuildError, log, shown
from .recording import Recording, iso, now

if TYPE_CHECKING:
    from .options import RecordOptions

FORCE_ORDER_URL = "wss://fstream.binance.com/ws/!forceOrder@arr"
PROGRESS_EVERY_S = 60
SYMBOL = re.compile(r"[A-Z0-9]+")


def duration(text: str) -> float:
    """Seconds from '23h', '90m', '30s', '0.5s' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is no duration (e.g. 23h, 90m, 30s)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


@dataclass
class Link:
    """One open connection and the tasks that read it and keep it alive."""
    ws: ClientConnection
    opened: float                 # time.monotonic() when it opened
    reader: asyncio.Task | None = None
    keepalive: asyncio.Task | None = None
    why_closed: str | None = None   # set where this side closed it (no pong)


class Recorder:
    def __init__(self, options: RecordOptions, recording: Recording):
        self.options = options
        self.recording = recording
        self.stop = asyncio.Event()
        self.connected_until: dt.datetime | None = None   # the last moment a connection was known to be alive
        self.down_since: dt.datetime | None = None         # the gap to write once connected again, and why
        self.down_reason = ""
        self.delay = 0.0           # the backoff's delay, before jitter (0: the next failure waits --retry-delay)
        self.pause = 0.0           # how long to wait before the next try to connect
        self.fatal: str | None = None   # why the recorder stopped itself (a file it cannot write)
        self.counts = dict.fromkeys(("received", "written", "duplicates", "other_symbols", "unreadable",
                                     "reconnects", "renewals"), 0)

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.stop.set)
        progress = asyncio.create_task(self.progress())
        try:
            link = await self.connect()
            renew_at = time.monotonic() + self.options.renew_after
            while link is not None:
                outcome = await self.until(link, renew_at)
                if outcome == "stop":
                    self.connected_until = now()
                    await self.close(link)
                    break
                if outcome == "renew":
                    link, renew_at = await self.renew(link)
                    continue
                self.dropped(link)
                link = await self.connect()
                renew_at = time.monotonic() + self.options.renew_after
        finally:
            progress.cancel()
            self.recording.save_state(self.connected_until, self.down_reason if self.down_since else None)
            log("record: stopped; " + ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in self.counts.items()))

    async def until(self, link: Link, renew_at: float) -> str:
        """Wait for what comes first: 'stop', 'renew' (time to renew the connection) or 'dropped'."""
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({link.reader, stopping}, timeout=max(0.0, renew_at - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return "stop" if self.stop.is_set() else "dropped" if link.reader.done() else "renew"

    async def renew(self, old: Link) -> tuple[Link, float]:
        """Open the new connection before closing the old: both are read for a moment (whatever both carry is
        written once), so a renewal leaves no gap. If the new one cannot be opened, the old one is kept and the
        renewal tried again after the backoff delay; if the old one drops first, that is a drop like any other
        (the main loop finds it ended, and the time until a new one opens is a gap)."""
        try:
            new = await self.open_unless(old.reader)
        except (OSError, TimeoutError, InvalidHandshake) as error:
            wait = self.backoff()
            log(f"record: renewal: cannot open a new connection to {self.options.url}: {error}; keeping the current "
                f"one, trying again in {wait:.1f} s")
            return old, time.monotonic() + wait
        if new is None:   # stopped, or the old one dropped, while the new one was opening
            return old, time.monotonic()
        await self.wait_stop(min(2.0, self.options.renew_after / 2))   # (read both: nothing in flight is lost)
        await self.close(old)
        self.counts["renewals"] += 1
        self.delay = 0.0
        log(f"record: renewed the connection after {time.monotonic() - old.opened:,.0f} s (the new one opened "
            "before the old one closed: no gap)")
        return new, time.monotonic() + self.options.renew_after

    def dropped(self, link: Link) -> None:
        """The connection ended without being asked to: what was pushed from then on is lost until a new one opens."""
        self.counts["reconnects"] += 1
        error = link.reader.result()
        self.down_since = self.connected_until or now()
        self.down_reason = f"connection dropped: {link.why_closed or error}"
        # a connection that had held is opened again at once; one that drops as soon as it opens, after a backoff
        self.pause = 0 if time.monotonic() - link.opened > self.options.max_retry_delay else self.backoff()
        log(f"record: {self.down_reason}; reconnecting")

    # ------------------------------------------------------------ connections

    async def open(self) -> Link:
        ws = await websockets.connect(self.options.url, open_timeout=self.options.heartbeat * 3, ping_interval=None,
                                      close_timeout=2, max_queue=None)
        link = Link(ws=ws, opened=time.monotonic())
        link.reader = asyncio.create_task(self.read(link))
        link.keepalive = asyncio.create_task(self.keep_alive(link))
        self.connected_until = now()
        self.recording.save_state(self.connected_until, None)
        return link

    async def open_unless(self, *first: asyncio.Future) -> Link | None:
        """open(), unless a stop, or any of `first`, comes before it has opened (None then: the try is abandoned)."""
        opening, stopping = asyncio.create_task(self.open()), asyncio.create_task(self.stop.wait())
        await asyncio.wait({opening, stopping, *first}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if opening.done():
            return opening.result()
        opening.cancel()
        await asyncio.wait({opening})
        return None

    async def connect(self) -> Link | None:
        """Open a connection, backing off between tries, until one opens (None: stopped first). The time the
        stream was not received before it opened is written as a gap."""
        while not self.stop.is_set():
            if self.pause:
                await self.wait_stop(self.pause)
                if self.stop.is_set():
                    break
            try:
                link = await self.open_unless()
                if link is None:
                    break
            except (OSError, TimeoutError, InvalidHandshake) as error:
                self.pause = self.backoff()
                log(f"record: cannot connect to {self.options.url}: {error}; next try in {self.pause:.1f} s")
                continue
            if self.down_since:
                self.recording.gap(self.down_since, self.connected_until, self.down_reason)
                log(f"record: connected to {self.options.url}; gap from {iso(self.down_since)} to "
                    f"{iso(self.connected_until)} written ({self.down_reason})")
            else:
                log(f"record: connected to {self.options.url}")
            self.down_since, self.delay, self.pause = None, 0.0, 0.0
            return link
        return None

    def backoff(self) -> float:
        """The next delay: doubled, capped, and jittered (half to all of it) so that many recorders cut off at once
        do not all come back at the same instant."""
        self.delay = min(max(self.delay * 2, self.options.retry_delay), self.options.max_retry_delay)
        return self.delay * random.uniform(0.5, 1.0)

    async def wait_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def close(self, link: Link) -> None:
        link.keepalive.cancel()
        await link.ws.close()
        await link.reader   # (it handles what came before the close)

    async def read(self, link: Link) -> str:
        """Handle every message until the connection ends; why it ended."""
        try:
            async for message in link.ws:
                self.connected_until = now()
                self.handle(message)
        except ConnectionClosed as error:
            return str(error)
        except OSError as error:   # (the recording's: the disk is full, the folder gone)
            return self.give_up(error)
        return f"the server closed it ({link.ws.close_code} {link.ws.close_reason or ''})".replace(" )", ")")

    def give_up(self, error: OSError) -> str:
        """A file the recorder cannot write: it stops (exit status 2, naming it) rather than record nothing."""
        self.fatal = f"cannot write in {shown(self.options.out)}: {error}"
        self.stop.set()
        return self.fatal

    async def keep_alive(self, link: Link) -> None:
        """Ping every --heartbeat seconds (Binance answers a ping with a pong): a pong proves the connection
        alive, and is when the state file learns it; no pong within three heartbeats closes it as dropped."""
        while True:
            await asyncio.sleep(self.options.heartbeat)
            try:
                pong = await link.ws.ping()
                await asyncio.wait_for(pong, self.options.heartbeat * 3)
            except TimeoutError:
                link.why_closed = f"no pong within {self.options.heartbeat * 3:g} s"
                await link.ws.close(1011, "no pong")
                return
            except ConnectionClosed:
                return
            self.connected_until = now()
            try:
                self.recording.save_state(self.connected_until, None)
            except OSError as error:
                self.give_up(error)
                return

    # ------------------------------------------------------------ events

    def handle(self, message: str | bytes) -> None:
        """Write the liquidations of one message: Binance's {"e": "forceOrder", "E": ..., "o": {...}}, a list of
        them, or the same wrapped as {"stream": ..., "data": ...} by a combined-stream URL."""
        try:
            data = json.loads(message)
            data = data.get("data", data) if isinstance(data, dict) else data
            for event in data if isinstance(data, list) else [data]:
                self.event(event["o"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            self.counts["unreadable"] += 1
            moment = now()
            self.recording.gap(moment, moment, f"unreadable message, its liquidation lost: {str(message)[:200]!r} "
                                               f"({type(error).__name__}: {error})")
            log(f"record: unreadable message written as a gap: {str(message)[:200]!r}")

    def event(self, order: dict) -> None:
        symbol, side, avg_price, filled_qty = order["s"], order["S"], str(order["ap"]), str(order["z"])
        trade_ms = int(order["T"])
        if not SYMBOL.fullmatch(symbol) or side not in ("BUY", "SELL") or not all(
                math.isfinite(float(v)) and float(v) >= 0 for v in (avg_price, filled_qty)):
            raise ValueError(f"not a liquidation: {order}")
        self.counts["received"] += 1
        if self.options.symbol and symbol not in self.options.symbol:
            self.counts["other_symbols"] += 1
        elif self.recording.add(symbol, side, trade_ms, avg_price, filled_qty):
            self.counts["written"] += 1
        else:
            self.counts["duplicates"] += 1

    async def progress(self) -> None:
        while True:
            before = dict(self.counts)
            await asyncio.sleep(PROGRESS_EVERY_S)
            new = {what: n - before[what] for what, n in self.counts.items()}
            log(f"record: {new['received']:,} liquidations in the last minute ({new['written']:,} written, "
                f"{new['duplicates']:,} already written, {new['other_symbols']:,} of other symbols); "
                f"{self.counts['reconnects']:,} reconnects and {self.counts['renewals']:,} renewals so far")


def record(options: RecordOptions) -> None:
    """Record until stopped (SIGTERM, SIGINT), into options.out."""
    try:
        parse_uri(options.url)
    except InvalidURI as error:
        raise BuildError(f"--url {options.url}: {error} (expected ws:// or wss://)") from None
    if bad := [symbol for symbol in options.symbol if not SYMBOL.fullmatch(symbol)]:
        raise BuildError(f"--symbol {bad[0]}: expected a Binance symbol such as BTCUSDT")
    try:
        options.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(options.out, os.O_RDONLY)
    except OSError as error:
        raise BuildError(f"cannot write in {options.out}: {error.strerror or error}") from None
    try:
        try:   # one recorder per folder: two would write every event twice
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another recorder is writing in {options.out}: stop it, or record into another --out") \
                from None
        recording = Recording(options.out)
        recorder = Recorder(options, recording)
        started = now()
        for repaired in recording.repair(started):
            log(f"record: {repaired}; written as a gap")
        state = recording.read_state()
        try:   # the time since the last run was last connected (or its last event): a gap, once connected
            recorder.down_since = dt.datetime.fromisoformat(state["connected_until"]) if state.get(
                "connected_until") else recording.last_event()
        except ValueError:
            recorder.down_since = recording.last_event()
        recorder.down_reason = "recorder not running" + (f" (and before it stopped, {state['disconnected']})"
                                                         if state.get("disconnected") else "")
        log(f"record: recording {', '.join(options.symbol) or 'every symbol'}'s liquidations from {options.url} "
            f"into {shown(options.out)} (renewing the connection every {options.renew_after:g} s)")
        asyncio.run(recorder.run())
        if recorder.fatal:
            raise BuildError(recorder.fatal)
    except OSError as error:   # (a gap or the state that could not be written)
        raise BuildError(f"cannot write in {shown(options.out)}: {error}") from None
    finally:
        os.close(fd)

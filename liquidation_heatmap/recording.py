"""The files `build.py record` writes into its --out folder, and nothing else: a CSV per UTC day of the
liquidations Binance's forceOrder stream pushed (forceOrder-YYYY-MM-DD.csv, in the recording format the build
reads: files.py LIQUIDATION_HEADERS), the gaps sidecar (forceOrder-gaps.csv: from_ts,to_ts,reason, which the
build reports in data_quality), and a small state file (forceOrder-state.json: until when the recorder knew it
was connected, so the next start can write the time it was not running as a gap).

Every line is appended whole in one write and fsynced, so a recorder killed at any point leaves whole lines
but, at worst, the last one cut short; the next start cuts that back to the last line end and writes a gap
saying so. Each event is written once: its identity (symbol, side, trade time, average price, filled
quantity) is looked up in its day's file, read back the first time the day is written to in a run."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from pathlib import Path

from .archives import write_atomic

HEADER = "timestamp,symbol,side,avg_price,filled_qty,usd_value\n"
GAPS_HEADER = "from_ts,to_ts,reason\n"
GAPS_FILE = "forceOrder-gaps.csv"
STATE_FILE = "forceOrder-state.json"
EPOCH = dt.datetime(1970, 1, 1)


def day_file_name(day: dt.date) -> str:
    return f"forceOrder-{day}.csv"


def iso(moment: dt.datetime) -> str:
    """A naive UTC time as the recordings write times: 2025-10-22T09:36:42.306000."""
    return moment.isoformat(timespec="microseconds")


def from_ms(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)   # (exact: a float of seconds may round the milliseconds)


def now() -> dt.datetime:
    """UTC, naive like every time the recordings hold."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def csv_line(*fields) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def append(path: Path, text: str, header: str) -> None:
    """Append whole lines in one write and fsync them (a new or empty file gets its header first): a process
    killed at any point leaves whole lines, or the last one cut short, never lines mixed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = ((header if os.fstat(fd).st_size == 0 else "") + text).encode()
        written = os.write(fd, data)
        while written < len(data):   # (a regular file takes all at once but on a full disk, which raises)
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


class Recording:
    """The --out folder of one recorder (the caller holds its lock: one recorder writes it at a time)."""

    def __init__(self, out: Path):
        self.out = out
        self.seen: dict[dt.date, set[tuple]] = {}   # each day written this run: the identities in its file

    # ------------------------------------------------------------ events

    def add(self, symbol: str, side: str, trade_ms: int, avg_price: str, filled_qty: str) -> bool:
        """Write one liquidation to its day's file, unless that file holds it already; whether it was written.
        The prices and quantities are written as Binance sent them, so that a resent event is known again."""
        moment = from_ms(trade_ms)
        key = (iso(moment), symbol, side, avg_price, filled_qty)   # (the columns of the file, in order)
        seen = self.day(moment.date())
        if key in seen:
            return False
        usd = float(avg_price) * float(filled_qty)
        append(self.out / day_file_name(moment.date()), csv_line(*key, repr(usd)), HEADER)
        seen.add(key)
        return True

    def day(self, day: dt.date) -> set[tuple]:
        """The identities already in a day's file, read the first time the day is written to in this run (a
        restart's current day, a late event's earlier day). Only the two latest days are kept in memory."""
        if day not in self.seen:
            path = self.out / day_file_name(day)
            rows = list(csv.reader(path.read_text(errors="replace").splitlines())) if path.exists() else []
            self.seen[day] = {tuple(row[:5]) for row in rows[1:] if len(row) >= 5}
            for old in sorted(self.seen)[:-2]:
                del self.seen[old]
        return self.seen[day]

    # ------------------------------------------------------------ gaps and state

    def gap(self, start: dt.datetime, end: dt.datetime, reason: str) -> None:
        """A time the stream was not received: nothing Binance pushed then is in the files."""
        append(self.out / GAPS_FILE, csv_line(iso(start), iso(end), reason), GAPS_HEADER)

    def read_state(self) -> dict:
        try:
            return json.loads((self.out / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, connected_until: dt.datetime | None, disconnected: str | None) -> None:
        """Until when the recorder knew it was connected (and, while not connected, why): written atomically."""
        if connected_until is None:
            return
        write_atomic(self.out / STATE_FILE, json.dumps({"connected_until": iso(connected_until),
                                                        "disconnected": disconnected}))

    def last_event(self) -> dt.datetime | None:
        """The time of the latest liquidation in the newest day's file (where the state file is gone)."""
        for path in sorted(self.out.glob("forceOrder-????-??-??.csv"), reverse=True):
            lines = path.read_text(errors="replace").splitlines()
            if len(lines) > 1:
                try:
                    return dt.datetime.fromisoformat(lines[-1].split(",")[0])
                except ValueError:
                    return None
        return None

    # ------------------------------------------------------------ repair at start

    def repair(self, started: dt.datetime) -> list[str]:
        """Cut every file whose last line has no line end (a recorder killed mid-write) back to its last whole
        line, and write a gap for each: the event or gap row cut short is lost. What was repaired, in words."""
        repaired = []
        for path in sorted(self.out.glob("forceOrder-????-??-??.csv")) + [self.out / GAPS_FILE]:
            cut = cut_line(path)
            if cut is None:
                continue
            whole = [line for line in path.read_text(errors="replace").splitlines()[1:] if line]
            since = gap_start(path, whole, cut, self.read_state())
            what, lost = ("gap", "this gap stands for it, up to this start") if path.name == GAPS_FILE else (
                "liquidation", "that liquidation is lost")
            reason = (f"repaired {path.name}: its last line, a {what} cut short by a recorder stopped mid-write, "
                      f"was dropped ({cut!r}): {lost}")
            self.gap(since, started, reason)
            repaired.append(reason)
        return repaired


def cut_line(path: Path) -> str | None:
    """Drop a file's last line if it has no line end, and return what was dropped (None: the file was whole)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return data[keep:].decode(errors="replace")


def gap_start(path: Path, whole: list[str], cut: str, state: dict) -> dt.datetime:
    """Since when the line cut short may have been written: its own first time where that came whole (a gap row's
    from_ts), else the last whole line's (a liquidation's time, a gap's end), else the start of the file's day,
    else when the recorder last knew it was connected."""
    candidates = [cut.split(",")[0]] if path.name == GAPS_FILE and "," in cut else []
    if whole:
        candidates.append(whole[-1].split(",")[1 if path.name == GAPS_FILE else 0])
    candidates += [path.stem.removeprefix("forceOrder-"), state.get("connected_until", "")]
    for text in candidates:
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            continue
    return now()

"""`build.py record` against a real WebSocket server on loopback that plays Binance's forceOrder stream: it
pushes each event to the connections open at that moment, drops them mid-stream, resends events, refuses
connections for a while, and closes a connection that outlives its age as Binance does at 24 hours. Every
event pushed while the recorder was connected is in its files once; every event pushed while it was not lies
inside a gap of the sidecar; a recorder killed with SIGKILL and started again loses and repeats nothing; its
folder builds, and the gaps are in data_quality."""

import asyncio
import csv
import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path

from conftest import ROOT, run_build
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

EPOCH = dt.datetime(1970, 1, 1)


class ForceOrderServer:
    """Binance's !forceOrder@arr stream, played on loopback from the test's thread through an event loop of its own."""

    def __init__(self, max_age_s: float | None = None):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.clients: set = set()
        self.refuse_until = 0.0
        self.opened = self.most_at_once = self.aged_out = 0
        self.max_age_s = max_age_s
        self.replay: list[str] = []   # sent to each new connection first (events the recorder has had already)
        self.server = self.call(self.listen())
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws/!forceOrder@arr"

    async def listen(self):
        return await serve(self.handler, "127.0.0.1", 0, process_request=self.process_request)

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def process_request(self, connection, request):
        if time.time() < self.refuse_until:   # (the stream down: the handshake is answered 503)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down for the test\n")
        return None

    async def handler(self, ws):
        for message in self.replay:
            await ws.send(message)
        self.clients.add(ws)
        self.opened += 1
        self.most_at_once = max(self.most_at_once, len(self.clients))
        try:
            await asyncio.wait_for(ws.wait_closed(), self.max_age_s)
        except TimeoutError:   # as Binance closes every connection after 24 hours
            self.aged_out += 1
            await ws.close(1001, "connection too old")
        finally:
            self.clients.discard(ws)

    def send(self, message: str) -> int:
        """Push one message to every connection open now; to how many it went."""
        async def push():
            sent = 0
            for ws in list(self.clients):
                try:
                    await ws.send(message)
                    sent += 1
                except ConnectionClosed:
                    pass
            return sent
        return self.call(push())

    def drop(self, refuse_s: float) -> None:
        """Close every connection mid-stream, and refuse new ones for refuse_s."""
        self.refuse_until = time.time() + refuse_s

        async def close_all():
            await asyncio.gather(*(ws.close(1011, "dropped by the test") for ws in list(self.clients)))
        self.call(close_all())

    def wait_connected(self, opened: int = 1, timeout: float = 15) -> None:
        """Until the recorder's `opened`th connection is open (and any before it closed or open)."""
        wait_for(lambda: self.clients and self.opened >= opened, timeout, f"connection {opened}")

    def stop(self) -> None:
        self.server.close()
        self.call(self.server.wait_closed())
        self.loop.call_soon_threadsafe(self.loop.stop)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def force_order(i: int, trade_ms: int, symbol: str = "BTCUSDT") -> str:
    """A message as Binance pushes it; each i a distinct liquidation."""
    price, quantity = f"{57000 + i * 0.1:.1f}", f"{0.001 * (1 + i % 50):.3f}"
    return json.dumps({"e": "forceOrder", "E": trade_ms + 3, "o": {
        "s": symbol, "S": "SELL" if i % 3 else "BUY", "o": "LIMIT", "f": "IOC", "q": quantity, "p": price, "ap": price,
        "X": "FILLED", "l": quantity, "z": quantity, "T": trade_ms}})


def identity(message: str) -> tuple:
    """What the recording writes for a message: (timestamp, symbol, side, avg_price, filled_qty)."""
    o = json.loads(message)["o"]
    return ((EPOCH + dt.timedelta(milliseconds=o["T"])).isoformat(timespec="microseconds"), o["s"], o["S"], o["ap"],
            o["z"])


def recorded(out: Path) -> list[tuple]:
    rows = []
    for path in sorted(out.glob("forceOrder-????-??-??.csv")):
        text = path.read_text()
        assert text.endswith("\n") and text.startswith("timestamp,symbol,side,avg_price,filled_qty,usd_value\n"), path
        for row in list(csv.reader(text.splitlines()))[1:]:
            assert float(row[5]) == float(row[3]) * float(row[4]), row
            rows.append(tuple(row[:5]))
    return rows


def gaps(out: Path) -> list[dict]:
    with (out / "forceOrder-gaps.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def start_recorder(url: str, out: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "build.py"), "record", "--url", url, "--out", str(out),
                             "--retry-delay", "0.2s", "--max-retry-delay", "1s", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(recorder: subprocess.Popen) -> str:
    recorder.send_signal(signal.SIGTERM)
    _, stderr = recorder.communicate(timeout=20)
    assert recorder.returncode == 0, stderr
    return stderr


def test_every_event_pushed_while_connected_is_written_once_and_every_other_lies_in_a_gap(tmp_path):
    server = ForceOrderServer(max_age_s=5)
    out = tmp_path / "recorded"
    recorder = start_recorder(server.url, out, "--renew-after", "2s", "--heartbeat", "0.5s",
                              "--symbol", "BTCUSDT", "--symbol", "ethusdt")
    pushed: list[tuple[str, int]] = []   # (message, connections it went to)

    def stream(seconds: float) -> None:
        """An event every 20 ms, for now (so a lost one's time says when it was lost), of BTCUSDT, ETHUSDT and a
        symbol not recorded; every 7th pushed twice."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = force_order(len(pushed), int(time.time() * 1000), ("BTCUSDT", "ETHUSDT", "SOLUSDT")[len(pushed) % 3])
            pushed.append((message, server.send(message)))
            if len(pushed) % 7 == 0:
                server.send(message)
            time.sleep(0.02)

    try:
        server.wait_connected()
        stream(1.3)
        server.send('{"e": "forceOrder", "o": {"s": "BTCUSDT"')   # a message cut short: its liquidation is lost
        stream(1.3)                       # a renewal on the way, at 2 s
        resent = [message for message, _ in pushed[-5:]]
        server.drop(refuse_s=1.0)         # mid-stream; the stream is down for a second
        lost_from = len(pushed)
        stream(0.6)
        lost = pushed[lost_from:]
        server.wait_connected(opened=server.opened + 1)
        for message in resent:            # resent after the reconnect: already written
            server.send(message)
        stream(2.6)                       # another renewal
    finally:
        stderr = stop(recorder)
        server.stop()
    delivered = [identity(message) for message, connections in pushed if connections and "SOLUSDT" not in message]
    assert lost and all(connections == 0 for _, connections in lost)
    lost = [message for message, _ in lost]
    rows = recorded(out)
    assert len(rows) == len(set(rows)) and set(rows) == set(delivered), stderr
    assert len(delivered) > 100 and not set(map(identity, lost)) & set(rows)
    # the drop is the one gap of time while running, and it holds every event lost; the cut message is lost too
    unreadable, dropped = gaps(out)
    assert unreadable["reason"].startswith("unreadable message") and "forceOrder" in unreadable["reason"], unreadable
    assert dropped["reason"].startswith("connection dropped") and "1011" in dropped["reason"], dropped
    for timestamp, *_ in map(identity, lost):
        assert dropped["from_ts"] <= timestamp <= dropped["to_ts"], (timestamp, dropped)
    # renewed before the server's forced close, each time opening the new connection before closing the old
    assert server.aged_out == 0 and server.most_at_once == 2 and server.opened >= 4
    assert stderr.count("renewed the connection") >= 2 and "reconnecting" in stderr
    assert "HTTP 503; next try in" in stderr   # (refused while the stream was down: tried again after a backoff)


def test_a_recorder_killed_and_started_again_loses_and_repeats_nothing_and_its_folder_builds(tmp_path, demo_dir):
    server = ForceOrderServer()
    out = tmp_path / "recorded"
    # liquidations of a day the demo's market holds, so that the build scores against them
    history = [force_order(i, int((dt.datetime(2024, 9, 2, 10) - EPOCH).total_seconds() * 1000) + i * 7000)
               for i in range(12)]
    day_file = out / "forceOrder-2024-09-02.csv"
    first = start_recorder(server.url, out, "--heartbeat", "0.3s")
    try:
        server.wait_connected()
        for message in history[:8]:
            server.send(message)
        wait_for(lambda: day_file.exists() and len(day_file.read_text().splitlines()) == 9, 10, "8 rows written")
        time.sleep(0.5)                   # (a heartbeat or two in the state file)
    finally:
        first.kill()                      # SIGKILL: no chance to tidy up
        first.wait()
    killed = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat()
    with day_file.open("a") as f:         # what a kill in the middle of a write leaves: a line cut short
        f.write("2024-09-02T11:5")
    server.replay = history[:8]           # each new connection is sent what was written before the kill first
    second = start_recorder(server.url, out, "--heartbeat", "0.3s")
    try:
        server.wait_connected(opened=2)
        for message in history[8:]:
            server.send(message)
        wait_for(lambda: len(day_file.read_text().splitlines()) == 13, 10, "12 rows written")
    finally:
        stderr = stop(second)
        server.stop()
    assert recorded(out) == [identity(message) for message in history], stderr
    assert "2024-09-02T11:5" not in day_file.read_text() and "repaired forceOrder-2024-09-02.csv" in stderr
    found = gaps(out)
    assert [g["reason"][:30] for g in found] == ["repaired forceOrder-2024-09-02", "recorder not running"], found
    repaired, not_running = found
    assert "'2024-09-02T11:5'" in repaired["reason"] and repaired["from_ts"] == identity(history[7])[0]
    assert not_running["from_ts"] <= killed <= not_running["to_ts"]
    # the folder builds: its liquidations scored, its gaps reported
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(demo_dir), "--db", str(db), "--liquidations", str(out))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM realized_liquidations WHERE source = 'forceOrder'").fetchone() == (12,)
        reported = con.execute("SELECT file, line, severity, detail, first_ts, last_ts FROM data_quality_problems "
                               "WHERE problem = 'recording_gap' ORDER BY line").fetchall()
    assert [(Path(file).name, line, severity) for file, line, severity, *_ in reported] == [
        ("forceOrder-gaps.csv", 2, "warning"), ("forceOrder-gaps.csv", 3, "warning")], reported
    assert "recorder not running" in reported[1][3] and reported[1][4].startswith(not_running["from_ts"][:19])

"""stream_view.py and `build.py demo --force-order-stream`: what a recorder of Binance's !forceOrder@arr stream
would have written for the simulated liquidations (per symbol, only the latest liquidation of each second)."""

import csv
import datetime as dt
from collections import Counter
from decimal import Decimal
from pathlib import Path

from conftest import read_zip_lines, run_build

from liquidation_heatmap.files import LIQUIDATION_HEADERS, liquidation_file
from liquidation_heatmap.stream_view import write_recording

SNAPSHOTS = "data/futures/um/daily/liquidationSnapshot/BTCUSDT"


def full_stream(raw: Path) -> list[dict]:
    """Every liquidation of the simulator's liquidationSnapshot files, in file order (read here with csv alone)."""
    return [row for path in sorted((raw / SNAPSHOTS).glob("*.zip")) for row in csv.DictReader(read_zip_lines(path))]


def recorded(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("forceOrder-*.csv")):
        assert liquidation_file(path).data_type == "forceOrder"   # the build knows it by its header
        day = [*csv.DictReader(path.read_text().splitlines())]
        assert {row["timestamp"][:10] for row in day} == {path.stem.removeprefix("forceOrder-")}   # one UTC day a file
        rows += day
    return rows


def trade_ms(row: dict) -> int:
    moment = dt.datetime.fromisoformat(row["timestamp"]).replace(tzinfo=dt.UTC)
    return round(moment.timestamp() * 1000)


def test_recording_keeps_the_latest_liquidation_of_each_second(demo_dir, tmp_path):
    summary = write_recording((demo_dir / SNAPSHOTS).glob("*.zip"), tmp_path)
    full, rows = full_stream(demo_dir), recorded(tmp_path)
    assert set(rows[0]) == LIQUIDATION_HEADERS["forceOrder"]
    assert rows[0]["timestamp"][10:11] == "T" and len(rows[0]["timestamp"]) == len("2025-10-22T09:36:42.306000")
    # at most one event per symbol and second, in time order
    per_second = Counter((row["symbol"], trade_ms(row) // 1000) for row in rows)
    assert max(per_second.values()) == 1 and [trade_ms(r) for r in rows] == sorted(trade_ms(r) for r in rows)
    # each is the latest liquidation of its second (the later row of the file on a tie), with its price,
    # quantity and side as the snapshot file has them, usd_value their exact product
    latest = {}
    for row in full:
        if (second := int(row["time"]) // 1000) not in latest or int(row["time"]) >= int(latest[second]["time"]):
            latest[second] = row
    assert [(trade_ms(r), r["side"], r["avg_price"], r["filled_qty"]) for r in rows] == [
        (int(r["time"]), r["side"], r["average_price"], r["accumulated_fill_quantity"]) for _, r in sorted(latest.items())]
    assert all(Decimal(r["usd_value"]) == Decimal(r["avg_price"]) * Decimal(r["filled_qty"]) for r in rows)
    # bursts lose liquidations: fewer events and less volume than the full stream, and the summary says how much
    full_usd = sum(Decimal(r["average_price"]) * Decimal(r["accumulated_fill_quantity"]) for r in full)
    kept_usd = sum(Decimal(r["usd_value"]) for r in rows)
    assert (summary["liquidations"], summary["recorded"]) == (len(full), len(rows)) and len(rows) < len(full)
    assert abs(summary["recorded_volume_share"] - float(kept_usd / full_usd)) < 1e-12
    assert 0.5 < summary["recorded_volume_share"] < 0.99


def test_demo_writes_the_recording_beside_its_files(tmp_path):
    out, stream = tmp_path / "raw", tmp_path / "recorded"
    result = run_build("--out", str(out), "--days", "1", "--trades-per-day", "500", "--seed", "3",
                       "--force-order-stream", str(stream), command="demo", traced=False)
    assert result.returncode == 0, result.stderr
    assert "forceOrder stream's recording written to" in result.stderr
    assert [p.name for p in stream.iterdir()] == ["forceOrder-2024-09-01.csv"]
    # the same as the recording made from the files it wrote: deterministic for a seed (as they are)
    again = tmp_path / "again"
    write_recording((out / SNAPSHOTS).glob("*.zip"), again)
    assert (again / "forceOrder-2024-09-01.csv").read_bytes() == (stream / "forceOrder-2024-09-01.csv").read_bytes()


def test_demo_refuses_a_recording_inside_its_files(tmp_path):
    result = run_build("--out", str(tmp_path / "raw"), "--force-order-stream", str(tmp_path / "raw" / "recorded"),
                       command="demo")
    assert result.returncode == 2 and "inside --out" in result.stderr and "twice" in result.stderr
    assert not (tmp_path / "raw").exists()   # refused before anything is simulated

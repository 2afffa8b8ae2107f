"""How many recorded days the location score needs (issue 31), measured on the simulator: SIMULATED numbers.

    .venv/bin/python tools/recorded_days.py [--seeds 1,2,3] [--days 7,14,21,30] [--work data/recorded-days] [--rebuild]

A recording of Binance's !forceOrder@arr stream carries prices, so the backtest's location claim
(location_gain_bits) can be scored on it, but the stream pushes per symbol only the latest liquidation of
each second. For each seed this simulates the 30-day demo (`build.py demo`'s defaults but the seed) once,
with `--force-order-stream`, into WORK/seed-N/ (raw/ and recorded/), links its files without the
liquidationSnapshot ones into market/, and builds, for each number of days D, the first D days:

    recorded  build --data market --liquidations recorded --end START+D-1   (the undercounted stream)
    full      build --data raw --end START+D-1                              (every liquidation: liquidationSnapshot)

each with --horizons 1h (the 1h scores are the same with the other horizons: each is scored apart). It prints,
per seed, liquidations, model (ensemble, binance_standard) and side, the location_gain_bits score and its skill
with the 90 % interval (backtest_skill: skill, skill_low, skill_high) at each D, and the fewest days from which
every longer recording measured has its interval above 0 (or below it), "> D" where none has; then, per D
over all rows, the intervals' median half-width, the skills' median size and how far the recording's skill is
from the full liquidations'. The first two days of each build are the backtest's warm-up (backtest_warmup_s):
D days are D - 2 scored days. Builds already made are read again from the small JSON file each leaves
(--rebuild makes them anew); three seeds take about an hour on two cores (a 30-day build, two to four minutes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
from liquidation_heatmap.options import DemoOptions
from liquidation_heatmap.stream_view import snapshot_liquidations, stream_snapshot

START = DemoOptions().start
WARMUP_DAYS = 2          # sql/seeds/model_parameters.csv backtest_warmup_s = 172800
MODELS = ("ensemble", "binance_standard")
SNAPSHOTS = Path("data/futures/um/daily/liquidationSnapshot")


def build_py(*args: str, log: Path) -> None:
    """build.py in its own process, its log kept in `log`; a failure stops the measurement, naming the log."""
    with log.open("w") as out:
        result = subprocess.run([sys.executable, str(ROOT / "build.py"), *args], stdout=out, stderr=subprocess.STDOUT,
                                check=False)
    if result.returncode:
        sys.exit(f"build.py {' '.join(args)} failed (exit {result.returncode}): see {log}")


def simulate(folder: Path, seed: int, days: int, rebuild: bool) -> None:
    """The seed's demo and its stream's recording, once; market/: its files but liquidationSnapshot, hard-linked."""
    if rebuild or not (folder / "recorded").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"simulating seed {seed} ({days} days) into {folder}", file=sys.stderr, flush=True)
        build_py("demo", "--out", str(folder / "raw"), "--seed", str(seed), "--days", str(days),
                 "--force-order-stream", str(folder / "recorded"), log=folder / "demo.log")
    if not (folder / "market").is_dir():
        shutil.copytree(folder / "raw", folder / "market", copy_function=os.link,
                        ignore=lambda _, names: [n for n in names if n == "liquidationSnapshot"])


def location_skills(folder: Path, source: str, days: int, cache: Path, rebuild: bool) -> dict[tuple[str, str], list]:
    """(model, side) -> [score, skill, skill_low, skill_high] of location_gain_bits at 1h, from a build of the first
    `days` days against the recording or the full liquidations. Kept in a small JSON file; the build's databases
    (hundreds of MB each) are removed once read."""
    kept, db = folder / f"{source}-{days}d.json", folder / f"{source}-{days}d.db"
    if rebuild or not kept.is_file():
        print(f"building {db} ({source} liquidations, {days} days)", file=sys.stderr, flush=True)
        data = ["--data", str(folder / "market"), "--liquidations", str(folder / "recorded")] if source == "recorded" \
            else ["--data", str(folder / "raw")]
        build_py("build", *data, "--db", str(db), "--cache", str(cache), "--horizons", "1h", "--full",
                 "--end", str(START + dt.timedelta(days=days - 1)), log=db.with_suffix(".log"))
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(
                "SELECT model, side, value, skill, skill_low, skill_high FROM backtest_skill WHERE metric = "
                "'location_gain_bits' AND horizon = '1h' AND symbol = 'BTCUSDT' AND model IN (?, ?)", MODELS).fetchall()
        kept.write_text(json.dumps(rows))
        for built in (db, db.with_suffix(".duckdb")):
            built.unlink()
    return {(model, side): rest for model, side, *rest in json.loads(kept.read_text())}


def kept_share(folder: Path) -> tuple[float, float]:
    """The recording's share of the liquidations and of their USD volume (what the stream kept)."""
    full = [row for path in sorted((folder / "raw" / SNAPSHOTS).rglob("*.zip")) for row in snapshot_liquidations(path)]
    kept = stream_snapshot(full)
    return len(kept) / len(full), float(sum(r.usd_value for r in kept) / sum(r.usd_value for r in full))


def days_needed(cells: list[list | None], days: list[int]) -> str:
    """The fewest days from which every longer recording's interval excludes 0 on one side of it."""
    for i, day in enumerate(days):
        later = [cell for cell in cells[i:] if cell]
        if later and len(later) == len(cells) - i and (all(c[2] > 0 for c in later) or all(c[3] < 0 for c in later)):
            return f"{day} ({'above' if later[0][2] > 0 else 'below'} 0)"
    return f"> {days[-1]}"


def cell(values: list | None) -> str:
    if not values:
        return "–"
    score, skill, low, high = values
    text = f"{score:.2f}; {skill:+.2f} [{low:+.2f}, {high:+.2f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1", type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--days", default="7,14,21,30", type=lambda text: sorted(int(n) for n in text.split(",")),
                        help="numbers of recorded days to score (each over 2, the warm-up)")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "recorded-days", help="simulations and builds")
    parser.add_argument("--rebuild", action="store_true", help="simulate and build again")
    args = parser.parse_args()
    if args.days[0] <= WARMUP_DAYS:
        parser.error(f"--days: each must be over {WARMUP_DAYS}, the backtest's warm-up")
    header = ["seed", "liquidations", "model", "side", *(f"{d} days ({d - WARMUP_DAYS} scored)" for d in args.days),
              "days needed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shares, by_days = [], {d: {} for d in args.days}   # D -> (seed, model, side) -> source -> cell
    for seed in args.seeds:
        folder = args.work / f"seed-{seed}"
        simulate(folder, seed, max(args.days), args.rebuild)
        shares.append(f"seed {seed}: {100 * (share := kept_share(folder))[0]:.1f} % of the liquidations, "
                      f"{100 * share[1]:.1f} % of their USD volume")
        for source, label in (("recorded", "recorded stream"), ("full", "full (liquidationSnapshot)")):
            scores = [location_skills(folder, source, d, args.work / "cache", args.rebuild) for d in args.days]
            for model in MODELS:
                for side in ("long", "short"):
                    cells = [by_day.get((model, side)) for by_day in scores]
                    for day, values in zip(args.days, cells, strict=True):
                        by_days[day].setdefault((seed, model, side), {})[source] = values
                    lines.append(f"| {seed} | {label} | {model} | {side} | " + " | ".join(map(cell, cells))
                                 + f" | {days_needed(cells, args.days)} |")
    print("Simulated market (build.py demo), BTCUSDT, horizon 1h. Each cell: location_gain_bits; its skill against "
          "the best baseline [90 % interval]; bold where the interval excludes 0.")
    print("The recording kept " + "; ".join(shares) + ".\n")
    print("\n".join(lines))
    print("\n" + "\n".join(spread(by_days)))


def spread(by_days: dict[int, dict]) -> list[str]:
    """Per number of days, over every seed, model and side: the intervals' median half-width, the skills' median
    size, and how far the recording's skill is from the full liquidations' (median, largest)."""
    header = "| recorded days | median half-width of the interval | median abs(skill) | abs(recorded - full skill): median, largest |"
    lines = [header, "|---|---|---|---|"]
    for day, rows in by_days.items():
        cells = [cell for row in rows.values() for cell in row.values() if cell]
        gaps = [abs(row["recorded"][1] - row["full"][1]) for row in rows.values() if all(row.values())]
        if cells and gaps:
            lines.append(f"| {day} | {median((c[3] - c[2]) / 2 for c in cells):.3f} | {median(abs(c[1]) for c in cells):.3f}"
                         f" | {median(gaps):.3f}, {max(gaps):.3f} |")
    return lines

if __name__ == "__main__":
    main()

"""The backtest as Markdown tables: each model's scores and skill against the best position-free baseline, and
the skill before and after across simulator seeds (`report --readme` writes them into the docs)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
from pathlib import Path

from .options import BuildOptions, DemoOptions, ReportOptions
from .pipeline import build, demo
from .project import ROOT, BuildError, log
from .serve import built_db

REPORT_METRICS = ("volume_pearson", "volume_spearman", "location_gain_bits", "precision")


README_BLOCKS = {name: re.compile(rf"(<!-- {name}: python build.py report --readme -->\n).*?(<!-- end of {name} -->)",
                                  re.DOTALL) for name in ("backtest report", "skill before and after")}


SKILL_COLUMNS = ("dataset", "horizon", "model", "side", "metric", "value", "skill", "best_baseline")


def backtest_report(db_path: Path) -> str:
    """The backtest as a Markdown table: per horizon, model and side, each metric's score and its skill
    against the best position-free baseline (docs/backtest.md's table is this, written by `report --readme`)."""
    with sqlite3.connect(db_path) as db:
        skill = {tuple(r[:5]): r[5:] for r in db.execute(
            "SELECT symbol, horizon, model, side, metric, value, skill, best_baseline, verdict LIKE 'beats%' "
            "FROM backtest_skill")}
        calibration = {(s, h, m, side): v for s, h, m, side, v in db.execute(
            "SELECT symbol, horizon, model, side, value FROM backtest_scores WHERE metric = 'calibration'")}
        keys = db.execute("SELECT DISTINCT symbol, horizon, model, side FROM backtest_skill "
                          "ORDER BY symbol, horizon_s, model, side").fetchall()
    lines = ["| symbol | horizon | model | side | " + " | ".join(REPORT_METRICS) + " | calibration |",
             "|---" * (len(REPORT_METRICS) + 5) + "|"]
    for key in keys:
        # (in bold where the skill's 90 % interval lies above 0: sql/backtest/scores.sql)
        cells = [("**{}**" if skill[(*key, m)][3] else "{}").format(
                     f"{skill[(*key, m)][0]:.2f} ({skill[(*key, m)][1]:+.2f} vs {skill[(*key, m)][2]})")
                 if (*key, m) in skill else "" for m in REPORT_METRICS]
        lines.append("| " + " | ".join([*key, *cells, f"{calibration.get(key) or 0:.1f}"]) + " |")
    wins = sum(bool(value[3]) for value in skill.values())
    ahead = sum(value[1] > 0 for value in skill.values())
    return "\n".join(lines) + (f"\n\n{wins} of {len(skill)} model scores beat the best baseline with their 90 % interval "
                                f"above 0 (in bold); {ahead} are ahead of it on the point estimate.\n")


def skill_rows(dataset: str, db_path: Path) -> list[dict]:
    """Every model's skill in a built database, as rows of the skills CSV."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return [dict(zip(SKILL_COLUMNS, (dataset, *row), strict=True)) for row in db.execute(
            "SELECT horizon, model, side, metric, value, skill, best_baseline FROM backtest_skill "
            "ORDER BY horizon_s, model, side, metric")]


def seed_db(options: ReportOptions, seed: int) -> Path:
    """A simulator seed's build under --seeds-dir: simulated and built when missing (or --rebuild)."""
    folder = options.seeds_dir / f"seed-{seed}"
    if options.rebuild or not (folder / "liquidations.db").exists():
        shutil.rmtree(folder / "raw", ignore_errors=True)
        demo(DemoOptions(out=folder / "raw", days=options.seed_days, seed=seed))
        build(BuildOptions(data=folder / "raw", db=folder / "liquidations.db", stored_answers=False))   # (scored, not served)
    return folder / "liquidations.db"


def signed(skill) -> str:
    return "–" if skill in (None, "") else f"{float(skill):+.2f}"  # "" or None: no such row, or no score


def skill_table(after: list[dict], before: list[dict]) -> str:
    """One row per dataset, horizon and model; per metric the skill before -> after, long / short."""
    skill = [{tuple(r[c] for c in SKILL_COLUMNS[:5]): r["skill"] for r in rows} for rows in (before, after)]
    datasets, horizons = (list(dict.fromkeys(r[c] for r in after + before)) for c in ("dataset", "horizon"))
    shown = {r["dataset"] for r in after}  # the before file's other datasets are left out
    keys = sorted({key[:3] for key in skill[0] | skill[1] if key[0] in shown},
                  key=lambda k: (datasets.index(k[0]), horizons.index(k[1]), k[2]))

    def cell(key, metric) -> str:  # "+0.07 → +0.10 / +0.14 → +0.12": before → after, long / short
        return " / ".join(" → ".join(signed(s.get((*key, side, metric))) for s in skill) for side in ("long", "short"))

    lines = ["| dataset | horizon | model | " + " | ".join(REPORT_METRICS) + " |", "|---" * 7 + "|"]
    lines += ["| " + " | ".join([*key, *(cell(key, m) for m in REPORT_METRICS)]) + " |" for key in keys]
    return "\n".join(lines) + "\n"


def report(options: ReportOptions) -> None:
    options.db = built_db(options.db)
    if not options.db.exists():
        raise BuildError(f"no database at {options.db}: run `python build.py` (or `python build.py build`) first")
    text = backtest_report(options.db)
    rows = skill_rows("demo", options.db) + [
        row for seed in options.seeds for row in skill_rows(f"seed {seed}", seed_db(options, seed))]
    options.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(options.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, SKILL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open(options.before if options.before.exists() else os.devnull) as f:  # no file: no skills before
        table = skill_table(rows, list(csv.DictReader(f)))
    if options.readme:
        readme = ROOT / "docs" / "backtest.md"   # (the README links it: the tables are its long story)
        new = readme.read_text() if readme.exists() else ""
        for (name, block), body in zip(README_BLOCKS.items(), (text, table), strict=True):
            if not block.search(new):
                raise BuildError(f"{readme} has no {name} block to replace")
            new = block.sub(lambda m, body=body: m[1] + body + m[2], new)
        readme.write_text(new)
        log(f"wrote the backtest report of {options.db} and the skill before and after into {readme}")
    print(text + "\n" + table, end="")

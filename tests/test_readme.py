"""Every number in the README's backtest table comes from `build.py report` on a fresh build of the demo."""

import re
import shutil

from conftest import ROOT

import build

NUMBER = re.compile(r"[-+]?\d+\.\d+")


def test_the_readme_backtest_table_is_what_a_fresh_build_reports(month_db):
    written = build.README_BLOCK.search((ROOT / "README.md").read_text())
    assert written, "README.md lost its backtest report block"
    fresh = build.backtest_report(month_db)
    table = written[0].split("\n", 1)[1].rsplit("\n", 1)[0] + "\n"
    # the same rows, baselines and words; the numbers equal to their last printed digit (sums of floats
    # in another order may move the 15th)
    assert NUMBER.sub("#", table) == NUMBER.sub("#", fresh)
    for old, new in zip(NUMBER.findall(table), NUMBER.findall(fresh), strict=True):
        assert abs(float(old) - float(new)) <= 0.0101, (old, new)


def test_report_writes_the_readme_block(month_db, tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    text = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(build.README_BLOCK.sub(lambda m: m[1] + "stale" + m[2], text))
    assert build.main(["report", "--db", str(month_db), "--readme"]) == 0
    assert capsys.readouterr().out in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("no block here\n")
    assert build.main(["report", "--db", str(month_db), "--readme"]) == 2

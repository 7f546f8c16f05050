"""The bench figures: median and range over trials, ratio to the baseline, target judged
on the right number; the README table spliced between its markers and nowhere else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import readme_table
from bench.cpu import CpuMeter
from bench.results import Figure, record


def test_a_figure_is_the_median_of_its_trials_with_its_range() -> None:
    f = Figure("x", "req/s", [900, 1200, 1000], ">=", 0.9, baseline=[1000, 1100, 1050],
               on_ratio=True)
    d = f.as_dict()
    assert d["value"] == 1000 and d["range"] == [900, 1200] and d["trials"] == 3
    assert d["baseline"] == 1050 and d["ratio"] == pytest.approx(1000 / 1050, abs=1e-3)
    assert d["met"] is True and d["target"] == ">= 0.9× baseline"
    assert Figure("p99", "ms", [40, 60, 55], "<=", 50).met is False  # median 55 > 50
    assert Figure("info", "s", [1.0], ">=", None).as_dict()["met"] is True


def test_record_replaces_only_the_figures_it_measured(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    record([Figure("a", "s", [1.0], "<=", 2), Figure("b", "s", [5.0], "<=", 2)], path=path)
    doc = record([Figure("b", "s", [1.5], "<=", 2)], path=path)
    assert [(f["name"], f["value"], f["met"]) for f in doc["figures"]] == [
        ("a", 1.0, True), ("b", 1.5, True)]
    assert {"date", "machine", "versions"} <= set(json.loads(path.read_text()))


def test_the_table_goes_between_the_markers_only(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    record([Figure("api.small.sustained", "req/s", [3100, 3000, 3200], ">=", 3039)], path=results)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{readme_table.START}\nstale\n{readme_table.END}\nafter\n")
    assert readme_table.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{readme_table.END}\nafter\n")
    assert "stale" not in text
    assert "| api.small.sustained | 3,100 req/s | 3,000–3,200 |  |  | >= 3039 req/s | yes | 3 |" \
        in text
    readme.write_text("no markers\n")
    assert readme_table.main(["--results", str(results), "--readme", str(readme)]) == 1
    assert readme.read_text() == "no markers\n"


def test_cpu_is_charged_to_the_group_of_the_process_that_spent_it() -> None:
    """A child that burns 0.4 s of CPU is charged to its group (matched on its command
    line), an idle one is not, per unit divides, and `total` sums the groups."""
    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
            "print('done', flush=True)\ntime.sleep(30)")
    meter = CpuMeter({"burner": "cpu-burner-marker", "idle": "cpu-idle-marker"})
    meter.start()
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             "cpu-idle-marker"])
    busy = subprocess.Popen([sys.executable, "-c", burn, "cpu-burner-marker"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "done"
        spent = meter.seconds()
        per_unit = meter.per_unit_ms(4)
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.wait()
    assert 0.35 <= spent["burner"] < 2.0, spent
    assert spent["idle"] < 0.2, spent
    assert per_unit["burner"] == pytest.approx(spent["burner"] * 1000 / 4, rel=0.2)
    assert per_unit["total"] == pytest.approx(
        sum(v for k, v in per_unit.items() if k != "total"), abs=0.01)


def test_a_missed_target_is_never_shown_rounded_onto_it() -> None:
    missed = Figure("voice.x", "calls/s", [166.0], ">=", 0.9, baseline=[185.3], on_ratio=True)
    kept = Figure("voice.y", "calls/s", [166.0], ">=", 0.8, baseline=[185.3], on_ratio=True)
    rows = readme_table.table({"figures": [missed.as_dict(), kept.as_dict()]}).splitlines()
    assert "| 0.896 | >= 0.9× baseline | **no** |" in rows[-2]
    assert "| 0.90 | >= 0.8× baseline | yes |" in rows[-1]

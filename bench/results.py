"""Figures you can trust: every figure is the median of several trials, kept with its range,
its baseline (when it has one), its target and whether the target was met, in
`bench/results.json` (DESIGN §10):

    {"date", "machine", "versions",
     "figures": [{"name", "value", "unit", "baseline"?, "ratio"?, "target", "met",
                  "trials", "range"?, "note"?}]}

A bench run replaces the figures it measured and keeps the others, so one bench can be
run again alone. `bench/readme_table.py` renders the file as the README's table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("HUB_BENCH_RESULTS", ROOT / "bench" / "results.json"))
QUICK_RESULTS = RESULTS.with_name("results-quick.json")  # smoke runs never touch the real file
MIN_TRIALS = 3
Op = Literal[">=", "<="]
PACKAGES = ("aiohttp", "asyncpg", "redis", "rq", "aiosmtplib", "twilio", "pydantic")


@dataclass
class Figure:
    """One measured figure: `values` holds one number per trial; the target applies to the
    ratio when there is a baseline and `on_ratio`, else to the value."""

    name: str
    unit: str
    values: list[float]
    op: Op
    target: float | None  # None: informational (no target; `met` is true)
    baseline: list[float] | None = None
    on_ratio: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        base = statistics.median(self.baseline)
        return self.value / base if base else None

    @property
    def met(self) -> bool:
        if self.target is None:
            return True
        judged = self.ratio if self.on_ratio else self.value
        if judged is None:
            return False
        return judged >= self.target if self.op == ">=" else judged <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "none (informational)"
        return f"{self.op} {self.target:g}" + ("× baseline" if self.on_ratio else f" {self.unit}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": _round(self.value), "unit": self.unit}
        if self.baseline:
            out["baseline"] = _round(statistics.median(self.baseline))
            out["baselineRange"] = [_round(min(self.baseline)), _round(max(self.baseline))]
        if self.ratio is not None:
            out["ratio"] = round(self.ratio, 3)
        out.update(target=self.target_text(), met=self.met, trials=len(self.values))
        if len(self.values) > 1:
            out["range"] = [_round(min(self.values)), _round(max(self.values))]
        if self.note:
            out["note"] = self.note
        out.update(self.extra)
        return out


def _round(value: float) -> float:
    return round(value, 4) if abs(value) < 100 else round(value, 1)


def _run(*args: str) -> subprocess.CompletedProcess[str] | None:
    """The command's result, or None when it cannot be run (absent, hung)."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _command(*args: str) -> str:
    """The first line a successful command prints, else "unavailable"."""
    out = _run(*args)
    lines = (out.stdout or out.stderr).strip().splitlines() if out else []
    return lines[0] if out and out.returncode == 0 and lines else "unavailable"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memoryMB": mem_kb // 1024,
            "kernel": platform.release(), "os": _os_name(), "load1": os.getloadavg()[0]}


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def versions(database_url: str | None = None) -> dict[str, str]:
    found = {"python": sys.version.split()[0],
             "hub": _hub_version(),
             "postgresql": _command("psql", "--version"),
             "redisServer": _command("redis-server", "--version"),
             "asterisk": _asterisk_version(),
             "sipp": _sipp_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    if database_url:
        found["postgresqlServer"] = _server_version(database_url)
    return found


def _hub_version() -> str:
    """The commit measured; `-dirty` when a tracked file differs from it (results files
    aside; untracked files, such as a virtualenv's link, do not count)."""
    commit = _command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    status = _run("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                  "--", ".", ":!bench/results.json", ":!bench/results-quick.json")
    return f"{commit}-dirty" if status and status.stdout.strip() else commit


def _asterisk_version() -> str:
    """The Asterisk on PATH, else the test bed's (scripts/asterisk.sh runs it in a chroot)."""
    found = _command("asterisk", "-V")
    root = os.environ.get("HUB_ASTERISK_ROOT", "/var/cache/connect-hub/asterisk-sid")
    if found == "unavailable" and Path(root, "usr/sbin/asterisk").exists():
        found = _command("chroot", root, "asterisk", "-V")
    return found


def _sipp_version() -> str:
    """`sipp -v` prints its version (on stdout, after a blank line) with a non-zero exit."""
    out = _run("sipp", "-v")
    text = out.stdout + out.stderr if out else ""
    return next((line.strip() for line in text.splitlines() if "SIPp" in line), "unavailable")


def _server_version(dsn: str) -> str:
    return _command("psql", dsn, "-tAc", "SHOW server_version")


def record(figures: Sequence[Figure], *, path: Path | None = None, quick: bool = False,
           database_url: str | None = None) -> dict[str, Any]:
    """Merge `figures` into the results file (same names replaced) and return it. Smoke
    runs (`quick`) go to bench/results-quick.json instead."""
    path = path or (QUICK_RESULTS if quick else RESULTS)
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {"figures": []}
    new = {f.name: f.as_dict() for f in figures}
    now, host, found = datetime.now(UTC).isoformat(timespec="seconds"), machine(), \
        versions(database_url)
    for item in new.values():
        item["run"] = run_of(now, host, found)  # each row says which run measured it
        if quick:
            item["quick"] = True  # a smoke run: not a measurement
    kept = [f for f in doc.get("figures", []) if f.get("name") not in new]
    doc.update(date=now, machine=host, versions=found)
    doc["figures"] = kept + list(new.values())
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def run_of(date: str, host: dict[str, Any], found: dict[str, str]) -> dict[str, str]:
    """What a figure keeps of the run that measured it."""
    return {"date": date, "cpu": str(host.get("cpu", "?")), "hub": found.get("hub", "?")}


def show(figures: Sequence[Figure]) -> None:
    """One line per figure on stdout."""
    for f in figures:
        d = f.as_dict()
        spread = f" (range {d['range'][0]:g}–{d['range'][1]:g})" if "range" in d else ""
        base = f"; baseline {d['baseline']:g}, ratio {d['ratio']:.2f}" if "ratio" in d else ""
        print(f"{f.name}: {d['value']:g} {f.unit}{spread}{base}; target {d['target']}:"
              f" {'met' if d['met'] else 'NOT met'} [{d['trials']} trials]", flush=True)

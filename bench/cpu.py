"""CPU accounting per process group over a bench run: what each part of the system spent
per call or message. On a machine whose cores every process shares, a throughput ratio
is the inverse ratio of these sums (the run that spends less CPU per unit does more
units), so they say why a ratio is what it is, and where the hub's share goes.

    meter = CpuMeter({"asterisk": "asterisk", "controller": "hub.cli.main voice"})
    ...; per_unit_ms = meter.per_unit_ms(units)   # since the meter was made (or `start`)

A group is matched on the process's command line (a substring) over the whole machine
(`postgres` is every PostgreSQL process: its backends, WAL writer, checkpointer): run on
a quiet machine, as every bench. `bench` is this process. Processes that start during the
run count from zero (a pid reused by another command too); those that end during it are
lost (short-lived helpers only)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import cpu_s


def _processes() -> dict[int, tuple[str, float]]:
    """Every process: pid → (command line, CPU seconds used so far)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(entry.name)] = (cmd, cpu_s(int(entry.name)))
        except OSError:  # gone meanwhile
            continue
    return found


class CpuMeter:
    def __init__(self, groups: dict[str, str]) -> None:
        self.groups = groups
        self._start = _processes()

    def _group(self, pid: int, cmd: str) -> str | None:
        if pid == os.getpid():
            return "bench"
        return next((name for name, needle in self.groups.items() if needle in cmd), None)

    def start(self) -> None:
        """Count from now (a meter counts from when it was made until then)."""
        self._start = _processes()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group since the meter was made (or `start`)."""
        spent = dict.fromkeys([*self.groups, "bench"], 0.0)
        for pid, (cmd, used) in _processes().items():
            group = self._group(pid, cmd)
            if group is not None:
                before = self._start.get(pid)
                base = before[1] if before is not None and before[0] == cmd else 0.0
                spent[group] += used - base
        return spent

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """CPU milliseconds per unit (call, message) per group since `start`, and `total`."""
        spent = {k: round(v * 1000 / max(units, 1), 3) for k, v in self.seconds().items()}
        return {**spent, "total": round(sum(spent.values()), 3)}

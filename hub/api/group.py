"""Several API processes on one port (`HUB_API_PROCESSES`).

One event loop uses one core: a single `hub api` process tops out near 1,000 small
submissions a second (README, Benchmarks). With `HUB_API_PROCESSES=N` (0: one per CPU)
`hub api` starts N members, each a whole `hub api` that listens on the same host and port
with SO_REUSEPORT, so the kernel spreads new connections over them; the process that was
started only supervises:
- a member that dies is replaced (logged); one that exits with an error within STARTUP_S
  of its start failed to start (port taken by another program, database unreachable),
  and then the group stops with its exit code instead of restarting it forever;
- SIGTERM or SIGINT stops every member gracefully (their own SIGTERM), SIGKILL after
  STOP_S; members get SIGTERM when the supervisor dies, however it dies;
- the members' counters live in a directory of the group's own (prometheus-client's
  multiprocess mode), so `/metrics`, whichever member answers it, shows the group's
  totals, counts of members since replaced included; `process_*` are the live members'
  sums (the earliest start time) and `hub_api_processes` says how many are alive.
Everything else a member keeps is a cache or a per-process bound (`HUB_API_MAX_IN_FLIGHT`
is per member).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from hub.config import Settings
from hub.observe import metrics

log = logging.getLogger(__name__)

GROUP_ENV = "HUB_API_GROUP"  # set in members: the group's directory
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when first imported
MEMBERS = "members"  # in the group's directory: the live members' pids
STARTUP_S = 10.0
STOP_S = 20.0
POLL_S = 0.2
PR_SET_PDEATHSIG = 1  # prctl(2)


def size(settings: Settings) -> int:
    """How many API processes this host runs."""
    return settings.api_processes or os.cpu_count() or 1


def folder() -> Path | None:
    """The group's directory when this process is a member of a group, else None."""
    value = os.environ.get(GROUP_ENV)
    return Path(value) if value else None


class Supervisor:
    def __init__(self, settings: Settings, count: int, where: Path) -> None:
        self.settings = settings
        self.count = count
        self.where = where
        self.env = {**os.environ, GROUP_ENV: str(where), METRICS_ENV: str(where),
                    "HUB_API_PROCESSES": "1"}
        self.members: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False
        self.code = 0

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.count):
                self._start()
            log.info("API: %d processes on %s:%d (pids %s)", self.count, self.settings.api_host,
                     self.settings.api_port, ", ".join(map(str, self.members)))
            while not self.stopping:
                time.sleep(POLL_S)
                self._replace_ended()
            log.info("API: stopping %d processes", len(self.members))
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli.main", "api"], env=self.env,
                                preexec_fn=_die_with_supervisor)
        self.members[proc.pid] = (proc, time.monotonic())
        self._write_members()

    def _replace_ended(self) -> None:
        for pid, (proc, started) in list(self.members.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.members[pid]
            self._write_members()
            if code > 0 and time.monotonic() - started < STARTUP_S:
                log.error("API process %d exited with code %s while starting; stopping the"
                          " group (see its error above)", pid, code)
                self.code = code or 1
                self.stopping = True
                return
            log.warning("API process %d exited with code %s; starting another", pid, code)
            self._start()

    def _stop_all(self) -> None:
        live = [proc for proc, _ in self.members.values() if proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("API process %d did not stop within %g s; killing it", proc.pid,
                            STOP_S)
                proc.kill()
                proc.wait()
        self.members.clear()

    def _write_members(self) -> None:
        temporary = self.where / f"{MEMBERS}.new"
        temporary.write_text("".join(f"{pid}\n" for pid in self.members))
        temporary.replace(self.where / MEMBERS)


def _die_with_supervisor() -> None:
    """In a member, before it runs: SIGTERM when the supervisor is gone, even killed with
    SIGKILL (Linux's parent-death signal), so no member is left holding the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(settings: Settings, count: int) -> int:
    """Run `count` API processes on the configured port until SIGTERM/SIGINT → exit code."""
    with tempfile.TemporaryDirectory(prefix="hub-api-") as where:
        return Supervisor(settings, count, Path(where)).run()


# -- /metrics of a member ----------------------------------------------------------------
def exposition() -> str:
    """The API's own metrics in the Prometheus text format: this process's, or, in a
    group, the group's."""
    registry = CollectorRegistry()
    registry.register(ApiCollector(folder()))
    return generate_latest(registry).decode()


def _alive(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


class ApiCollector(Collector):
    def __init__(self, where: Path | None) -> None:
        self.where = where  # the group's directory; None: a process on its own

    def collect(self) -> Iterator[Metric]:
        if self.where is None:
            yield from metrics.API.collect()
            yield _processes(1)
            return
        own = metrics.api_metric_names()
        shared = MultiProcessCollector(None, path=str(self.where))  # type: ignore[no-untyped-call]
        for family in shared.collect():  # type: ignore[no-untyped-call]
            if family.name in own:  # members also load the worker's and voice's metrics
                yield family
        try:
            listed = [int(x) for x in (self.where / MEMBERS).read_text().split()]
        except (OSError, ValueError):
            listed = [os.getpid()]
        pids = _alive(listed)
        yield from _summed(pids)
        yield _processes(len(pids))


def _processes(count: int) -> Metric:
    return GaugeMetricFamily("hub_api_processes",
                             "API processes serving this port (HUB_API_PROCESSES).", value=count)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def _summed(pids: list[int]) -> Iterator[Metric]:
    """process_* of these processes: sums (the earliest start time, the smallest fd limit)."""
    merged: dict[str, Metric] = {}
    for pid in pids:
        for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
            for sample in family.samples:
                into = merged.get(sample.name)
                if into is None:
                    into = merged[sample.name] = Metric(family.name, family.documentation,
                                                        family.type)
                    into.add_sample(sample.name, sample.labels, sample.value)
                    continue
                old = into.samples[0].value
                value = (min(old, sample.value)
                         if sample.name.endswith(("start_time_seconds", "max_fds"))
                         else old + sample.value)
                into.samples[0] = into.samples[0]._replace(value=value)
    yield from merged.values()

"""Several API processes on one port (`HUB_API_PROCESSES`).

One event loop uses one core: a single `hub api` process tops out near 1,000 small
submissions a second (README, Benchmarks). With `HUB_API_PROCESSES=N` (0: one per CPU
this process may use) `hub api` starts N members, each a whole `hub api` that listens on
the same host and port with SO_REUSEPORT, so the kernel spreads new connections over
them; the process that was started only supervises:
- before starting members it checks that no other program listens on the port (members
  share it with each other, not with a stranger or a second group);
- a member is ready once it listens; one that exits before that failed to start (the
  port taken meanwhile, a crash at import, killed while starting), and the group stops
  with its exit code instead of restarting it forever; a ready member that dies is
  replaced (logged), but more than MAX_RESTARTS replacements within RESTART_WINDOW_S stop
  the group too;
- SIGTERM or SIGINT stops every member gracefully (their own SIGTERM), a second signal or
  STOP_S without an exit kills them; members get SIGTERM when the supervisor dies,
  however it dies (Linux's parent-death signal);
- the members' counters live in a directory of the group's own (prometheus-client's
  multiprocess mode), so `/metrics`, whichever member answers it, shows the group's
  totals, counts of members since replaced included; `process_*` are each live member's,
  labelled `pid`, and `hub_api_processes` says how many are alive.
Everything else a member keeps is a cache or a per-process bound (`HUB_API_MAX_IN_FLIGHT`
is per member).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
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
READY = "ready-"  # + pid: the member listens
STOP_S = 8.0  # within docker's default 10 s grace
POLL_S = 0.2
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1  # prctl(2)


class GroupError(Exception):
    """The group cannot start (a clear one-line reason)."""


def size(settings: Settings) -> int:
    """How many API processes this host runs: the setting, or (0) one per CPU this
    process may use (its affinity, within its cgroup's CPU quota)."""
    if settings.api_processes:
        return settings.api_processes
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def folder() -> Path | None:
    """The group's directory when this process is a member of a group, else None."""
    value = os.environ.get(GROUP_ENV)
    return Path(value) if value else None


def ready(message: str) -> None:
    """A member's sites listen (aiohttp's run_app reports it): tell the supervisor."""
    where = folder()
    if where is not None:
        (where / f"{READY}{os.getpid()}").touch()


def port_free(host: str, port: int) -> None:
    """Raise GroupError when another program listens on host:port (a bind without
    SO_REUSEPORT fails even against listeners that set it)."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise GroupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class Supervisor:
    def __init__(self, settings: Settings, count: int, where: Path) -> None:
        self.settings = settings
        self.count = count
        self.where = where
        self.env = {**os.environ, GROUP_ENV: str(where), METRICS_ENV: str(where),
                    "HUB_API_PROCESSES": "1"}
        self.members: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: deque[float] = deque()
        self.signals = 0
        self.code = 0
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.pid = os.getpid()

    @property
    def stopping(self) -> bool:
        return self.signals > 0 or self.code != 0

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
        self.signals += 1
        if self.signals > 1:  # asked twice: no more waiting
            for proc in self.members.values():
                if proc.poll() is None:
                    proc.kill()

    def _start(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli.main", "api"], env=self.env,
                                preexec_fn=self._die_with_supervisor)
        self.members[proc.pid] = proc
        self._write_members()

    def _die_with_supervisor(self) -> None:
        """In a member, before it runs: SIGTERM when the supervisor is gone."""
        if self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != self.pid:
            os._exit(1)  # cannot be tied to the supervisor, or it is gone already

    def _replace_ended(self) -> None:
        for pid, proc in list(self.members.items()):
            code = proc.poll()
            if code is None or self.stopping:
                continue
            del self.members[pid]
            was_ready = (self.where / f"{READY}{pid}").exists()
            self._forget(pid)
            if not was_ready:
                log.error("API process %d exited with code %s before it listened; stopping"
                          " the group (see its error above)", pid, code)
                self.code = code if code > 0 else 1
                return
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - RESTART_WINDOW_S:
                self.restarts.popleft()
            if len(self.restarts) > MAX_RESTARTS:
                log.error("API process %d exited with code %s, the %d. in %g s; stopping the"
                          " group", pid, code, len(self.restarts), RESTART_WINDOW_S)
                self.code = 1
                return
            log.warning("API process %d exited with code %s; starting another", pid, code)
            self._start()

    def _forget(self, pid: int) -> None:
        """A member gone: off the list; its files go but its counts (they stay counted)."""
        self._write_members()
        for path in self.where.iterdir():
            name = path.name
            if name == f"{READY}{pid}" or (name.endswith(f"_{pid}.db")
                                            and not name.startswith("counter_")):
                path.unlink(missing_ok=True)

    def _stop_all(self) -> None:
        live = [proc for proc in self.members.values() if proc.poll() is None]
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
        self.where.mkdir(parents=True, exist_ok=True)
        temporary = self.where / f"{MEMBERS}.new"
        temporary.write_text("".join(f"{pid}\n" for pid in self.members))
        temporary.replace(self.where / MEMBERS)


def supervise(settings: Settings, count: int) -> int:
    """Run `count` API processes on the configured port until SIGTERM/SIGINT → exit code."""
    try:
        port_free(settings.api_host, settings.api_port)
    except GroupError as exc:
        log.error("API: %s", exc)
        return 1
    with tempfile.TemporaryDirectory(prefix="hub-api-") as where:
        return Supervisor(settings, count, Path(where)).run()


# -- /metrics of a member ----------------------------------------------------------------
def exposition() -> str:
    """The API's own metrics in the Prometheus text format: this process's, or, in a
    group, the group's (this process's own if the group's directory cannot be read)."""
    where = folder()
    registry = CollectorRegistry()
    registry.register(ApiCollector(where))
    try:
        return generate_latest(registry).decode()
    except (OSError, ValueError) as exc:  # the directory gone (a tmp cleaner), a torn file
        log.warning("the API group's metrics could not be read (%s); this process's only", exc)
        return metrics.exposition(metrics.API)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
        listed = [int(x) for x in (self.where / MEMBERS).read_text().split()]
        pids = [pid for pid in listed if _alive(pid)]
        yield from _per_member(pids)
        yield _processes(len(pids))


def _processes(count: int) -> Metric:
    return GaugeMetricFamily("hub_api_processes",
                             "API processes serving this port (HUB_API_PROCESSES).", value=count)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def _per_member(pids: list[int]) -> Iterator[Metric]:
    """process_* of each member, labelled with its pid (sum them in queries: a sum here
    would fall whenever a member is replaced, which a counter must not)."""
    families: dict[str, Metric] = {}
    for pid in pids:
        collector = ProcessCollector(pid=_constant(pid), registry=None)
        for family in collector.collect():
            into = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                           family.type))
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
    yield from families.values()

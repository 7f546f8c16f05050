"""Shared bench plumbing: a dedicated database, the hub's processes, timing helpers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.results import MIN_TRIALS, Figure, record, show
from hub.dev.procs import stop_all

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get("HUB_BENCH_DATABASE_URL",
                        "postgresql://postgres:postgres@127.0.0.1:5432/hub_bench")
REDIS_URL = os.environ.get("HUB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")


@dataclass(frozen=True)
class Options:
    """What every bench script accepts: `--quick` (a smoke run of a few seconds: small
    sizes, one trial, figures marked as such) and `--trials N`."""

    quick: bool
    trials: int

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def options(argv: Sequence[str] | None = None, description: str = "") -> Options:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes, one trial (proves the script works)")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"trials per figure (default {MIN_TRIALS}; 1 with --quick)")
    args = parser.parse_args(argv)
    trials = args.trials if args.trials is not None else (1 if args.quick else MIN_TRIALS)
    return Options(quick=args.quick, trials=max(1, trials))


def cli(main: Callable[[Options], Coroutine[Any, Any, list[Figure]]], doc: str | None) -> None:
    """Run a bench's `main` from the command line; print and record its figures."""
    opts = options(None, (doc or "").strip().splitlines()[0] if doc else "")
    figures = asyncio.run(main(opts))
    finish(figures, opts)


def finish(figures: list[Figure], opts: Options) -> None:
    show(figures)
    record(figures, quick=opts.quick, database_url=DB_URL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    out.update({"HUB_DATABASE_URL": DB_URL, "HUB_REDIS_URL": REDIS_URL,
                "HUB_ALLOW_PRIVATE_URLS": "true", "HUB_OPEN_TRUNKS": "trunk",
                "HUB_LOG_LEVEL": "WARNING"})
    out.update(extra)
    return out


async def fresh_database() -> None:
    from hub.store.db import migrate

    parts = urlsplit(DB_URL)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
    await migrate(DB_URL)
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()


def spawn(*args: str, **extra: str) -> subprocess.Popen[bytes]:
    """`python -m ARGS` with the bench's environment; its stderr goes to bench/logs/."""
    logs = ROOT / "bench" / "logs"
    logs.mkdir(exist_ok=True)
    log = open(logs / f"{args[0].rsplit('.', 1)[-1]}-{'-'.join(args[1:2])}.log", "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env(**extra),
                            stdout=log, stderr=log)


@contextmanager
def processes(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        stop_all(procs)


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory now."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process ever had (VmHWM): the figure that matters."""
    return _status_mb(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Start the process's VmHWM afresh from its current RSS (Linux: clear_refs 5), so that
    the next `peak_rss_mb` is the peak since now, not over the process's life."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


async def new_app_key() -> str:
    from hub.store.apps import create_app
    from hub.store.db import create_pool

    pool = await create_pool(DB_URL, max_size=1)
    try:
        return (await create_app(pool, "bench")).api_key
    finally:
        await pool.close()


async def add_email_transport(http: Any, url: str, smtp_port: int,
                              headers: dict[str, str] | None = None, **config: Any) -> None:
    """Give the app (whose key `http` or `headers` carries) the email transport `smtp`,
    sending to the SMTP sink on `smtp_port`; `config` adds to its settings."""
    async with http.post(url + "/v1/transports", headers=headers, data=json.dumps({
            "name": "smtp", "type": "email",
            "config": {"host": "127.0.0.1", "port": smtp_port, "from": "a@example.com",
                       **config}})) as r:
        assert r.status == 201, await r.text()


async def run_session(http: Any, url: str, body: dict[str, Any],
                      poll_s: float = 0.05) -> tuple[dict[str, Any], float]:
    """Submit an instruction and wait for its session to complete: (session, seconds)."""
    start = time.perf_counter()
    async with http.post(url + "/v1/sessions", data=json.dumps(body)) as r:
        sid = (await r.json())["sessionId"]
    while True:
        async with http.get(f"{url}/v1/sessions/{sid}") as r:
            session: dict[str, Any] = await r.json()
        if session["status"] == "completed":
            return session, time.perf_counter() - start
        await asyncio.sleep(poll_s)


async def deliver_all(http: Any, url: str, body: dict[str, Any], n: int,
                      poll_s: float = 0.05) -> uuid.UUID:
    """Submit one immediate instruction for `n` recipients, wait until its session is
    completed in the database, and assert what a user would check: every delivery
    `delivered`, exactly one attempt each. Returns the session's id."""
    async with http.post(url + "/v1/sessions", data=json.dumps(body)) as r:
        assert r.status == 201, await r.text()
        sid = uuid.UUID((await r.json())["sessionId"])
    conn = await asyncpg.connect(DB_URL)
    try:
        while await conn.fetchval("SELECT status FROM sessions WHERE id = $1",
                                  sid) != "completed":
            await asyncio.sleep(poll_s)
        counts = dict(await conn.fetch(
            "SELECT status, count(*) FROM deliveries WHERE session_id = $1 GROUP BY 1", sid))
        attempts = await conn.fetchval(
            "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
            " WHERE d.session_id = $1", sid)
    finally:
        await conn.close()
    assert counts == {"delivered": n}, counts
    assert attempts == n, f"{attempts} attempts for {n} deliveries"
    return sid


async def session_rate(sid: uuid.UUID, n: int) -> float:
    """Recipients per second over the session's life: n / (endedAt − createdAt)."""
    conn = await asyncpg.connect(DB_URL)
    try:
        seconds = await conn.fetchval(
            "SELECT extract(epoch FROM ended_at - created_at) FROM sessions WHERE id = $1", sid)
    finally:
        await conn.close()
    return n / float(seconds)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]

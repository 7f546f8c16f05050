"""Shared bench plumbing: a dedicated database, the hub's processes, timing helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from hub.dev.procs import stop_all

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get("HUB_BENCH_DATABASE_URL",
                        "postgresql://postgres:postgres@127.0.0.1:5432/hub_bench")
REDIS_URL = os.environ.get("HUB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")


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

    admin = await asyncpg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres")
    await admin.execute("DROP DATABASE IF EXISTS hub_bench WITH (FORCE)")
    await admin.close()
    await migrate(DB_URL)
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()


def spawn(*args: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env(**extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]

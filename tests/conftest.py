"""Fixtures on real services: PostgreSQL database `hub_test`, Redis db 9, the hub's own
processes started as a user starts them, an aiosmtpd sink and a webhook receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis import Redis

from hub.config import Settings
from hub.dev import siplog, smtp
from hub.dev.fake_http import FakeSlack, HttpSink
from hub.dev.fake_twilio import FakeTwilio
from hub.dev.phones import Phones, RtpCounter
from hub.store.apps import NewApp, create_app
from hub.store.db import create_pool, migrate
from tests.helpers import Api, WebhookReceiver, free_port
from tests.netfakes import Listener

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get("HUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hub_test")
REDIS_URL = os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
DB_NAME = DB_URL.rsplit("/", 1)[1]
# Which embedded Asterisk (scripts/asterisk.sh instance) and SIPp port this run uses, so that
# two runs on one machine can each have their own: instance N >= 2 has ARI on 8087+N, AMI on
# 5037+N, SIP on 5058+2N, and its trunk points at phones on 5070+2*(N-1).
ASTERISK_INSTANCE = int(os.environ.get("HUB_TEST_ASTERISK_INSTANCE", "1"))
ARI_URL = f"http://127.0.0.1:{8087 + ASTERISK_INSTANCE}"
AMI_PORT = 5037 + ASTERISK_INSTANCE
SIP_PORT = 5060 if ASTERISK_INSTANCE == 1 else 5058 + 2 * ASTERISK_INSTANCE
PHONES_PORT = 5070 + 2 * (ASTERISK_INSTANCE - 1)
AGI_PORT = 4572 + ASTERISK_INSTANCE  # the instance's dialplan calls agi://127.0.0.1:<this>
ASTERISK_ENV = {**os.environ, "HUB_ASTERISK_INSTANCE": str(ASTERISK_INSTANCE),
                "HUB_TRUNK_CONTACT": f"127.0.0.1:{PHONES_PORT}"}
TABLES = ("webhook_attempts", "webhook_events", "attempts", "deliveries", "sessions",
          "idempotency_keys", "suppressions", "transports", "api_keys", "apps", "blobs",
          "early_receipts", "callbacks")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update({
        "HUB_DATABASE_URL": DB_URL,
        "HUB_REDIS_URL": REDIS_URL,
        "HUB_ALLOW_PRIVATE_URLS": "true",
        "HUB_OPEN_TRUNKS": "trunk",
        "HUB_RECONCILE_INTERVAL_S": "1",
        "HUB_WEBHOOK_RETRY_SCHEDULE": "0,1,2,3",
        "HUB_ARI_URL": ARI_URL,
        "HUB_AMI_PORT": str(AMI_PORT),
        "HUB_AGI_PORT": "0",  # FastAGI only where a test asks for it (one listener per port)
        "HUB_LOG_LEVEL": os.environ.get("HUB_TEST_LOG_LEVEL", "INFO"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(database_url=DB_URL, redis_url=REDIS_URL, allow_private_urls=True,
                    open_trunks="trunk", reconcile_interval_s=1, webhook_retry_schedule="0,1,2,3",
                    ari_url=ARI_URL, ami_port=AMI_PORT)


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(DB_URL.rsplit("/", 1)[0] + "/postgres")
    await conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    await conn.close()
    await migrate(DB_URL)
    pool = await create_pool(DB_URL, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
async def db(database: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """An empty schema and an empty Redis database for each test."""
    await database.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    redis.close()
    yield database


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    client.close()


class Procs:
    """The hub's processes, started with `hub ...` exactly as an operator would."""

    def __init__(self, log_dir: Path, public_url: str = "") -> None:
        self.log_dir = log_dir
        self.public_url = public_url  # where providers' callbacks reach the API
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{args[0]}-{len(self.running)}.log", "wb")  # noqa: SIM115
        if self.public_url:
            env.setdefault("HUB_PUBLIC_URL", self.public_url)
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli.main", *args], cwd=ROOT,
                                env=base_env(**env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.running.append(proc)
        return proc

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.start("worker", **env)

    def api(self, port: int, **env: str) -> subprocess.Popen[bytes]:
        """`hub api` on `port`, returned once it answers /healthz."""
        proc = self.start("api", HUB_API_PORT=str(port), **env)
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.time() + 30
        while time.time() < deadline:
            if subprocess.run(["curl", "-sf", url], capture_output=True).returncode == 0:
                return proc
            time.sleep(0.2)
        raise RuntimeError("hub api did not start:\n" + self.logs())

    def stop_all(self) -> None:
        for proc in self.running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.running.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def procs(tmp_path: Path, api_server: str) -> Iterator[Procs]:
    p = Procs(tmp_path, api_server)
    yield p
    p.stop_all()


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory, database: asyncpg.Pool) -> Iterator[str]:
    """One `hub api` process for the whole run (it keeps no state of its own)."""
    port = free_port()
    p = Procs(tmp_path_factory.mktemp("api"))
    p.api(port)
    yield f"http://127.0.0.1:{port}"
    p.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_app(db: asyncpg.Pool) -> Callable[[str], Any]:
    async def make(name: str = "acme") -> NewApp:
        return await create_app(db, name)

    return make


@pytest.fixture
async def api(api_server: str, http: aiohttp.ClientSession, make_app: Any) -> Api:
    """A client of the running API, authenticated as a fresh app."""
    app = await make_app("acme")
    return Api(http, api_server, app)


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, smtp.SmtpSink]]:
    controller, sink = smtp.start()
    yield controller.port, sink
    controller.stop()


@pytest.fixture
async def email_transport(api: Api, smtp_sink: tuple[int, smtp.SmtpSink]) -> dict[str, Any]:
    port, _ = smtp_sink
    status, body = await api.post("/v1/transports", {
        "name": "smtp", "type": "email",
        "config": {"host": "127.0.0.1", "port": port, "from": "Hub <hub@example.com>"}})
    assert status == 201, body
    return body


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A loopback listener counting connections: what the guard must never let through."""
    counting = Listener()
    await counting.start()
    yield counting
    await counting.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    rec = WebhookReceiver()
    await rec.start()
    yield rec
    await rec.stop()



@pytest.fixture(scope="session")
def asterisk() -> Iterator[None]:
    """The embedded Asterisk test bed, up for the whole run and always taken down."""
    script = ROOT / "scripts" / "asterisk.sh"
    env = ASTERISK_ENV
    up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=900,
                        env=env)
    if up.returncode != 0:
        raise RuntimeError(f"embedded Asterisk did not start:\n{up.stderr}")
    yield
    subprocess.run(["bash", str(script), "down"], capture_output=True, timeout=120, env=env)


class TestPhones:
    """SIPp phones plus what they heard."""

    __test__ = False

    def __init__(self, phones: Phones, rtp: RtpCounter) -> None:
        self.phones = phones
        self.rtp = rtp

    def start(self, **digits: str) -> None:
        self.phones.start(**digits)


@pytest.fixture
async def phones(asterisk: None, tmp_path: Path) -> AsyncIterator[TestPhones]:
    rtp = RtpCounter()
    await rtp.start()
    p = Phones(tmp_path, rtp.port, keep_log=True, sip_port=PHONES_PORT)
    p.start()
    yield TestPhones(p, rtp)
    p.stop()
    rtp.stop()
    subprocess.run(["bash", str(ROOT / "scripts" / "asterisk.sh"), "hangup-all"],
                   capture_output=True, timeout=30, env=ASTERISK_ENV)
    # Every voice test: the phones' own trace shows no number dialled while an earlier
    # call to it was still live.
    twice = siplog.overlapping(siplog.calls(p.logs))
    assert twice == [], f"dialled while an earlier call was live: {twice}"


@pytest.fixture
async def voice_transport(api: Api) -> dict[str, Any]:
    status, body = await api.post("/v1/transports", {
        "name": "test-trunk", "type": "voice",
        "config": {"trunk": "trunk", "callerId": "+9771000000", "maxChannels": 20, "cps": 20,
                   "ringTimeoutS": 5}})
    assert status == 201, body
    return body


TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "test-auth-token-0123456789"


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio(TWILIO_SID, TWILIO_TOKEN)
    await fake.start(free_port())
    yield fake
    await fake.stop()


@pytest.fixture
def twilio_transport(api: Api, fake_twilio: FakeTwilio) -> Callable[..., Any]:
    async def register(type_: str = "sms", name: str = "twilio", **config: Any) -> dict[str, Any]:
        status, body = await api.post("/v1/transports", {"name": name, "type": type_, "config": {
            "accountSid": TWILIO_SID, "authToken": TWILIO_TOKEN, "from": "+14155550100",
            "baseUrl": fake_twilio.url, **config}})
        assert status == 201, body
        return dict(body)

    return register


SLACK_TOKEN = "xoxb-test-token-0123456789"


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(SLACK_TOKEN)
    await fake.start(free_port())
    yield fake
    await fake.stop()


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    server = HttpSink()
    await server.start(free_port())
    yield server
    await server.stop()

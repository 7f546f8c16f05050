"""A voice session's audio, prepared with the guard on (as production runs): whatever goes
wrong with `fileUrl` (a redirect to a refused address, a bad port, a bad Location, bad
audio) is an `AudioError` with the reason, which fails that session only; nothing is
reached behind the guard and no credential is echoed. All on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from hub.config import Settings
from hub.voice.audio import AudioError, AudioStore
from tests.helpers import local_server
from tests.netfakes import Listener, Redirector, hosts_entries


@pytest.fixture
def redirector_name() -> Iterator[str]:
    with hosts_entries("redirector.test"):
        yield "redirector.test"


@pytest.fixture
async def redirector(listener: Listener) -> AsyncIterator[Redirector]:
    server = Redirector(f"http://127.0.0.1:{listener.port}/a.wav")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def store(tmp_path: Path, redirector_name: str) -> AudioStore:
    """The guard on; only the redirector's name is trusted (not where it points)."""
    return AudioStore(Settings(allow_private_urls=False, trusted_hosts=redirector_name,
                               media_dir=str(tmp_path / "media"), fetch_timeout_s=5))


async def test_redirect_to_a_refused_address_is_the_sessions_audio_error(
    store: AudioStore, redirector: Redirector, listener: Listener,
) -> None:
    with pytest.raises(AudioError, match="not an allowed destination"):
        await store.prepare(f"http://redirector.test:{redirector.port}/start.wav", None)
    assert redirector.hits == ["/start.wav"]  # the trusted first hop was asked
    assert listener.count == 0  # the hop to a loopback port was never made


async def test_a_port_out_of_range_is_an_audio_error(store: AudioStore, listener: Listener,
                                                      ) -> None:
    with pytest.raises(AudioError, match="fileUrl could not be fetched"):
        await store.prepare("http://127.0.0.1:99999/a.wav", None)
    with pytest.raises(AudioError, match="not an allowed destination"):
        await store.prepare(f"http://0x7f000001:{listener.port}/a.wav", None)
    assert listener.count == 0


async def test_fetch_errors_never_echo_url_credentials(
    store: AudioStore, redirector: Redirector,
) -> None:
    url = f"http://alice:s3cret-pw@redirector.test:{redirector.port}/missing.wav?sig=t0ken99"
    with pytest.raises(AudioError) as failed:
        await store.prepare(url, None)
    text = str(failed.value)
    assert "HTTP 404" in text
    assert "s3cret-pw" not in text and "alice" not in text and "t0ken99" not in text


async def test_bad_location_and_bad_audio_are_audio_errors(store: AudioStore,
                                                           redirector_name: str) -> None:
    async def bad_location(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://[::1/x"})

    async def not_audio(request: web.Request) -> web.Response:
        return web.Response(body=b"this is not a wav file", content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/redirect.wav", bad_location)
    app.router.add_get("/garbage.wav", not_audio)
    runner, base = await local_server(app)
    port = base.rsplit(":", 1)[1]
    try:
        with pytest.raises(AudioError, match="fileUrl could not be fetched"):
            await store.prepare(f"http://{redirector_name}:{port}/redirect.wav", None)
        with pytest.raises(AudioError, match="could not be converted"):
            await store.prepare(f"http://{redirector_name}:{port}/garbage.wav", None)
    finally:
        await runner.cleanup()

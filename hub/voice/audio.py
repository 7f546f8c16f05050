"""Audio for voice sessions: `fileUrl` fetched once (guarded, size/time limits, content
type checked) or `message` synthesised (espeak-ng by default, pluggable), converted to
8 kHz mono 16-bit WAV with sox, cached by content hash in the media folder that Asterisk
sees as /var/lib/asterisk/sounds/hub.

The media folder is often a volume shared with Asterisk (its own filesystem): every
temporary file lives inside it, so the final rename is atomic and never crosses a mount,
and a folder that cannot be written (read-only, full, not ours) fails the session with
that reason instead of looking like a passing fault."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hub.config import Settings
from hub.net import FetchError, Guard, fetch, guarded_session

ASTERISK_MEDIA_DIR = "/var/lib/asterisk/sounds/hub"
AUDIO_TYPES = ("audio/", "application/ogg", "application/octet-stream")


class AudioError(Exception):
    """The session's audio cannot be used; the message says why. Every error of fetching
    (`FetchError`, guard refusals included), converting or synthesising becomes one, so
    that a bad `fileUrl` fails its own session and nothing else."""


@dataclass(frozen=True)
class Media:
    name: str
    duration_s: float

    @property
    def path(self) -> str:
        """The file as Asterisk names it (no extension), for Playback or AGI STREAM FILE."""
        return f"{ASTERISK_MEDIA_DIR}/{self.name}"

    @property
    def uri(self) -> str:
        return f"sound:{self.path}"


class Tts(Protocol):
    async def synthesise(self, text: str, out: Path, language: str | None) -> None: ...


class EspeakTts:
    """espeak-ng, the default engine; `language` is an espeak voice such as `en` or `ne`."""

    async def synthesise(self, text: str, out: Path, language: str | None) -> None:
        args = ["espeak-ng", "-w", str(out)]
        if language:
            args += ["-v", language]
        await _run(*args, "--", text)


async def _run(*args: str) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
    except OSError as exc:
        raise AudioError(f"{args[0]} could not run: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        raise AudioError(f"{args[0]} failed: {err.decode(errors='replace').strip()[:300]}")


class AudioStore:
    def __init__(self, settings: Settings, tts: Tts | None = None) -> None:
        self.settings = settings
        self.folder = Path(settings.media_dir)
        self.tts = tts or EspeakTts()

    async def prepare(self, file_url: str | None, message: str | None,
                      language: str | None = None) -> Media:
        with self._folder_errors():
            self.folder.mkdir(parents=True, exist_ok=True)
        if file_url:
            return await self._from_url(file_url)
        if message:
            return await self._from_text(message, language)
        raise AudioError("voice needs fileUrl or message")

    async def _from_url(self, url: str) -> Media:
        s = self.settings
        guard = Guard.of(s)
        try:
            async with guarded_session(guard) as http:
                got = await fetch(http, url, allow_private=guard,
                                  max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s,
                                  accept=AUDIO_TYPES)
        except FetchError as exc:
            raise AudioError(f"fileUrl could not be fetched: {exc}") from exc
        name = "f-" + hashlib.sha256(got.body).hexdigest()[:32]
        return await self._convert(name, got.body, suffix=_suffix(url, got.content_type))

    async def _from_text(self, text: str, language: str | None) -> Media:
        name = "t-" + hashlib.sha256(f"{language}|{text}".encode()).hexdigest()[:32]
        target = self.folder / f"{name}.wav"
        if not target.exists():
            with self._workdir() as tmp:
                raw = tmp / "tts.wav"
                await self.tts.synthesise(text, raw, language)
                with self._folder_errors():
                    body = raw.read_bytes()
            return await self._convert(name, body, suffix=".wav")
        return Media(name, _duration(target))

    async def _convert(self, name: str, body: bytes, suffix: str) -> Media:
        target = self.folder / f"{name}.wav"
        if target.exists():
            return Media(name, _duration(target))
        with self._workdir() as tmp:
            src = tmp / f"in{suffix}"
            out = tmp / "out.wav"
            with self._folder_errors():
                src.write_bytes(body)
            try:
                await _run("sox", str(src), "-r", "8000", "-c", "1", "-b", "16", "-e",
                           "signed-integer", str(out))
                duration = _duration(out)
            except (AudioError, OSError, EOFError, wave.Error) as exc:
                raise AudioError(f"the audio could not be converted: {exc}") from exc
            if duration < 0.2:
                raise AudioError("the audio is shorter than 0.2 s")
            with self._folder_errors():
                os.chmod(out, 0o644)  # Asterisk runs as another user
                os.replace(out, target)  # atomic, same folder: Asterisk never sees half a file
        return Media(name, duration)

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """A private folder inside the media folder (same filesystem as the result),
        removed afterwards; hidden, so that no sound name can point into it."""
        with self._folder_errors():
            tmp = tempfile.TemporaryDirectory(dir=self.folder, prefix=".tmp-",
                                              ignore_cleanup_errors=True)
        with tmp as path:
            yield Path(path)

    @contextlib.contextmanager
    def _folder_errors(self) -> Iterator[None]:
        """A filesystem error in the media folder is the session's audio error, with the
        reason (read-only, full, permission): retrying would not help."""
        try:
            yield
        except OSError as exc:
            raise AudioError(f"the media folder {self.folder} cannot be used: "
                             f"{_reason(exc)}") from exc


def _duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        frames: int = w.getnframes()
        rate: int = w.getframerate()
    return frames / float(rate)


def _reason(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{os.strerror(exc.errno)} [{name}]{where}"


def _suffix(url: str, content_type: str) -> str:
    by_type = {"audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/wav": ".wav",
               "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/ogg": ".ogg",
               "application/ogg": ".ogg", "audio/flac": ".flac"}
    if content_type in by_type:
        return by_type[content_type]
    tail = url.rsplit("?", 1)[0].rsplit(".", 1)
    ext = tail[1].lower() if len(tail) == 2 else ""
    return "." + ext if ext.isascii() and ext.isalnum() and len(ext) <= 4 else ".mp3"

"""The media folder as production has it: a volume of its own (another filesystem than
the system's temporary folder), sometimes read-only or full. Audio is still prepared
(temporary files live in the media folder, so the final rename never crosses a mount),
and a folder that cannot be written is the session's `AudioError` with the reason."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from hub.config import Settings
from hub.voice.audio import AudioError, AudioStore
from tests.mounts import tmpfs


def store(media: Path) -> AudioStore:
    return AudioStore(Settings(media_dir=str(media)))


async def test_audio_is_prepared_when_the_temporary_folder_is_another_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    media = tmp_path / "media"
    with tmpfs(tmp_path / "tmpfs") as other:
        monkeypatch.setattr(tempfile, "tempdir", str(other))  # as TMPDIR on a tmpfs would
        got = await store(media).prepare(None, "Hello from a volume.")
        assert list(other.iterdir()) == []  # nothing was written on the other filesystem
    wav = media / f"{got.name}.wav"
    assert wav.is_file() and got.duration_s > 0.2
    assert wav.stat().st_mode & 0o777 == 0o644  # Asterisk, another user, reads it
    assert sorted(p.name for p in media.iterdir()) == [wav.name]  # no temporary left over


async def test_a_read_only_media_folder_is_the_sessions_audio_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "media", read_only=True) as media:
        with pytest.raises(AudioError) as failed:
            await store(media).prepare(None, "Nobody will hear this.")
    assert f"the media folder {media} cannot be used" in str(failed.value)
    assert "Read-only file system [EROFS]" in str(failed.value)


async def test_a_media_folder_that_cannot_be_made_is_the_sessions_audio_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AudioError, match=r"cannot be used: Not a directory \[ENOTDIR\]"):
        await store(blocker / "media").prepare(None, "Nobody will hear this.")

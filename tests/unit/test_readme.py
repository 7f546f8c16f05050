"""The README's configuration reference lists every setting the hub reads."""

from __future__ import annotations

from pathlib import Path

from hub.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"HUB_{name.upper()}" for name in Settings.model_fields
               if f"`HUB_{name.upper()}`" not in README]
    assert missing == []


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```", 2)[1]
    assert [line.split()[:2] for line in block.strip().splitlines()] == [
        ["make", "demo"], ["make", "test"]]

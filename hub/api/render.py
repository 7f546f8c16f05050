"""A tiny safe HTML renderer for the dashboard: `string.Template` files in `templates/`
whose `$names` are HTML-escaped unless the value is `Markup` (HTML this module built,
every piece of it escaped on the way in); and the URLs of the files in `static/`."""

from __future__ import annotations

import hashlib
import html
from functools import cache
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
STATIC_URL = "/dashboard/static"
# Each static file's content hash: pages link `name?v=hash`, so a long cache is safe.
STATIC_VERSIONS = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                   for p in STATIC.iterdir() if p.is_file()}


def asset(name: str) -> str:
    return f"{STATIC_URL}/{name}?v={STATIC_VERSIONS[name]}"


class Markup(str):
    """HTML that is already safe: inserted as is."""


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def tag(name: str, content: object = "", **attrs: object) -> Markup:
    """`<name attrs>content</name>` with the content and every attribute escaped
    (`class_` for `class`, `data_x` for `data-x`; None drops an attribute)."""
    parts = [name] + [f'{k.rstrip("_").replace("_", "-")}="{escape(v)}"'
                      for k, v in attrs.items() if v is not None]
    return Markup(f"<{' '.join(parts)}>{escape(content)}</{name}>")


def join(pieces: list[Markup]) -> Markup:
    return Markup("".join(escape(p) for p in pieces))


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def render(name: str, **values: object) -> str:
    """The template `name` with every value escaped (Markup as is). A missing value is
    an error, not an empty hole."""
    return _template(name).substitute({k: escape(v) for k, v in values.items()})

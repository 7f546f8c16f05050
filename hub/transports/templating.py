"""Per-recipient request bodies for the generic API transport, and a small JSON path.

Templates are JSON values whose strings may hold placeholders: `{{address}}`,
`{{message}}`, `{{subject}}`, `{{extras.NAME}}`; in bulk mode a string that is exactly
`{{addresses}}` becomes the list of the batch's addresses, and `{{each}}` marks an object
repeated once per recipient (e.g. `{"messages": ["{{each}}", {"to": "{{address}}"}]}`).
Paths: `$.a.b[0].c`, and `[*]` for every element of a list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+|\*)\]")


def render(template: Any, values: Mapping[str, Any], addresses: list[str] | None = None) -> Any:
    """Fill a template for one recipient (`values`) or a batch (`addresses`)."""
    if isinstance(template, str):
        if template.strip() == "{{addresses}}" and addresses is not None:
            return list(addresses)
        whole = PLACEHOLDER.fullmatch(template.strip())
        if whole:  # a lone placeholder keeps its value's JSON type
            return _lookup(values, whole.group(1))
        return PLACEHOLDER.sub(lambda m: _text(_lookup(values, m.group(1))), template)
    if isinstance(template, list):
        return [render(item, values, addresses) for item in template]
    if isinstance(template, dict):
        return {key: render(value, values, addresses) for key, value in template.items()}
    return template


def render_each(template: Any, batch: list[Mapping[str, Any]]) -> Any:
    """Bulk: expand `["{{each}}", item]` lists once per recipient of the batch."""
    addresses = [str(v["address"]) for v in batch]
    if isinstance(template, list):
        if len(template) == 2 and template[0] == "{{each}}":
            return [render(template[1], values, addresses) for values in batch]
        return [render_each(item, batch) for item in template]
    if isinstance(template, dict):
        return {key: render_each(value, batch) for key, value in template.items()}
    return render(template, batch[0] if batch else {}, addresses)


def _lookup(values: Mapping[str, Any], name: str) -> Any:
    current: Any = values
    for part in name.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return ""
        current = current[part]
    return current


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def json_path(document: Any, path: str) -> Any:
    """Evaluate `$.a.b[0]` / `$.items[*].id`; None where the path does not exist."""
    if not path.startswith("$"):
        raise ValueError("a JSON path starts with $")
    nodes = [document]
    for name, index in PATH_PART.findall(path[1:]):
        nxt = []
        for node in nodes:
            if name and isinstance(node, dict) and name in node:
                nxt.append(node[name])
            elif index == "*" and isinstance(node, list):
                nxt.extend(node)
            elif index and index != "*" and isinstance(node, list) and int(index) < len(node):
                nxt.append(node[int(index)])
        nodes = nxt
    if "[*]" in path:
        return nodes
    return nodes[0] if nodes else None


def valid_path(path: str) -> bool:
    rest = path[1:] if path.startswith("$") else None
    return rest is not None and PATH_PART.sub("", rest) == ""

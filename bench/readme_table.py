"""Render `bench/results.json` as the README's benchmark table, between the markers
`<!-- bench:start -->` and `<!-- bench:end -->` (nothing outside them changes).

    python bench/readme_table.py [--results bench/results.json] [--readme README.md] [--print]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    v = doc.get("versions", {})
    lines = [
        "Each row names the run that measured it (`run`: when its figures were recorded, UTC;"
        " the CPU; the hub's commit). The latest run: "
        f"{doc.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores,"
        f" {m.get('memoryMB', '?')} MB), {m.get('os', '?')}; Python {v.get('python', '?')},"
        f" {v.get('postgresql', '?')}, {v.get('redisServer', '?')}; hub {v.get('hub', '?')}."
        " Each value is the median of its trials, with the range (min–max) over them.",
        "",
        "| figure | value | range | baseline | ratio | target | met | trials | run |",
        "|---|---:|---|---:|---:|---|:-:|---:|---|",
    ]
    for f in doc.get("figures", []):
        rng = f"{_num(f['range'][0])}–{_num(f['range'][1])}" if "range" in f else ""
        base = _num(f["baseline"]) if "baseline" in f else ""
        ratio = _ratio(f["ratio"], f.get("met")) if "ratio" in f else ""
        met = "yes" if f.get("met") else "**no**"
        name = f["name"] + (" *(smoke run)*" if f.get("quick") else "")
        lines.append(f"| {name} | {_num(f['value'])} {f['unit']} | {rng} | {base} | {ratio}"
                     f" | {f['target']} | {met} | {f['trials']} | {_run(f.get('run'))} |")
    return "\n".join(lines)


def splice(text: str, block: str) -> str:
    """`text` with everything between the markers replaced by `block`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {START} ... {END} block")
    return text[:start + len(START)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--print", action="store_true", help="print the table, change nothing")
    args = parser.parse_args(argv)
    block = table(json.loads(args.results.read_text()))
    if args.print:
        print(block)
        return 0
    try:
        args.readme.write_text(splice(args.readme.read_text(), block))
    except ValueError as exc:
        print(f"readme_table: {exc}", file=sys.stderr)
        return 1
    print(f"readme_table: {args.readme} updated from {args.results}")
    return 0


def _run(run: dict[str, str] | None) -> str:
    if not run:
        return "?"
    cpu = " ".join(w for w in run.get("cpu", "?").replace("(R)", "").split()
                   if w not in ("Processor", "CPU"))
    return f"{run.get('date', '?')[:16].replace('T', ' ')} {cpu} {run.get('hub', '?')}"


def _ratio(ratio: float, met: bool | None) -> str:
    """Two decimals; three for a missed target whose two would round up (0.896, not 0.90
    next to a target of 0.9)."""
    short = f"{ratio:.2f}"
    return f"{ratio:.3f}" if met is False and float(short) > ratio else short


if __name__ == "__main__":
    sys.exit(main())

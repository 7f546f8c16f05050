"""`make bench`: every benchmark in turn, each writing its figures (median and range of its
trials) into bench/results.json, then the README's table regenerated from that file.

    python bench/run_all.py [--quick] [--trials N] [--only api,email,...] [--skip-voice]
        [--no-readme]

`--quick` is a smoke run (seconds per bench, one trial) whose figures go to
bench/results-quick.json and never into the README.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    api_bench,
    email_bench,
    readme_table,
    scale_bench,
    sms_bench,
    throttled_bench,
    voice_bench,
    voice_capacity,
    voice_unpaced,
    worker_bench,
)
from bench.common import Options, finish  # noqa: E402
from bench.results import MIN_TRIALS, QUICK_RESULTS, RESULTS, Figure  # noqa: E402

Main = Callable[[Options], Coroutine[Any, Any, list[Figure]]]
BENCHES: dict[str, Main] = {
    "api": api_bench.main, "email": email_bench.main, "sms": sms_bench.main,
    "throttled": throttled_bench.main, "scale": scale_bench.main,
    "voice": voice_bench.main, "voice_unpaced": voice_unpaced.main,
    "voice_capacity": voice_capacity.main, "worker": worker_bench.main,
}
VOICE = {"voice", "voice_unpaced", "voice_capacity"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(BENCHES))
    parser.add_argument("--skip-voice", action="store_true")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    trials = args.trials if args.trials is not None else (1 if args.quick else MIN_TRIALS)
    opts = Options(quick=args.quick, trials=max(1, trials))
    chosen = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    failed = []
    for name in chosen:
        if args.skip_voice and name in VOICE:
            continue
        print(f"== {name} ({'quick' if opts.quick else f'{opts.trials} trials'})", flush=True)
        start = time.monotonic()
        try:
            finish(asyncio.run(BENCHES[name](opts)), opts)
        except Exception as exc:  # one bench failing must not hide the others' figures
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
        print(f"== {name}: {time.monotonic() - start:.0f} s", flush=True)
    if not args.quick and not args.no_readme:
        readme_table.main(["--results", str(RESULTS)])
    else:
        readme_table.main(["--results", str(QUICK_RESULTS if opts.quick else RESULTS), "--print"])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: every benchmark, each printing its figures and ratios."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import api_bench, email_bench, sms_bench, throttled_bench, voice_bench  # noqa: E402


def main() -> None:
    asyncio.run(api_bench.main())
    asyncio.run(email_bench.main())
    asyncio.run(throttled_bench.main())
    asyncio.run(sms_bench.main())
    asyncio.run(voice_bench.main())


if __name__ == "__main__":
    main()

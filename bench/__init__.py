"""The performance benchmark of issue 4: `python -m bench.run --help`."""

import sys
import time


def log(message: str) -> None:
    """A progress line on stderr; the report itself goes to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

"""One benchmark in its own process: `python -m benchmarks.child NAME --out FILE [--smoke]`.

A fresh process per benchmark lets each set the service's environment (limits, Redis,
sandbox) before `worker.celery_app` reads it at import. Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cli import BENCHMARKS
from benchmarks.common import exit_on_sigterm, quiet_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark and write its figures to --out."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    quiet_logging()
    exit_on_sigterm()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"cw-bench-{args.name}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    result = BENCHMARKS[args.name].module.run(smoke=args.smoke, work_dir=log_dir)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

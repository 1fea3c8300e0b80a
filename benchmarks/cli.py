"""Run every benchmark (each in its own process), print the tables, write the report.

Exit status: 0 when every benchmark ran (a goal may still be MISSED), 1 when a benchmark
itself broke (an error, a timeout) or the report could not be written, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks import (
    budget,
    deadman,
    failover,
    hotpath,
    mass_cancel,
    owners,
    pipeline,
    report,
    scheduling,
    throughput,
)
from benchmarks.common import ROOT, say


class BenchmarkModule(Protocol):
    """A benchmark's module: `run` measures (in a process of its own), `REPORT` reports."""

    @property
    def REPORT(self) -> report.Report: ...

    def run(self, *, smoke: bool, work_dir: Path) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Benchmark:
    """One entry of the list: the module, and how long a run of it may take."""

    module: BenchmarkModule
    full_s: float  # time limit, seconds
    smoke_s: float  # time limit with --smoke, seconds


#: Every benchmark, in run and report order, by the name its figures are saved under.
#: Adding one: a module with `run` and `REPORT` (see benchmarks.report), and a line here.
BENCHMARKS: dict[str, Benchmark] = {
    "budget": Benchmark(budget, 360.0, 120.0),
    "hotpath": Benchmark(hotpath, 600.0, 200.0),
    "pipeline": Benchmark(pipeline, 300.0, 90.0),
    "producer": Benchmark(throughput, 180.0, 60.0),
    "scheduling": Benchmark(scheduling, 480.0, 180.0),
    "mass_cancel": Benchmark(mass_cancel, 720.0, 240.0),
    "deadman": Benchmark(deadman, 300.0, 90.0),
    "failover": Benchmark(failover, 600.0, 150.0),
    "owners": Benchmark(owners, 300.0, 150.0),
}
REPORTS: report.Reports = {name: b.module.REPORT for name, b in BENCHMARKS.items()}
TERM_GRACE_S = 40.0  # a benchmark told to stop gets this long to stop its own workers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m benchmarks`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run cancel-worker's benchmarks against the sandbox (issue 7) and write "
        "BENCHMARKS.md, benchmarks/plot.png and benchmarks/results.json (the raw figures); "
        "with --smoke, into a temporary directory.",
    )
    parser.add_argument("--smoke", action="store_true", help="small, CI-sized samples")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="write BENCHMARKS.md, plot.png and results.json here",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite the report and plot from a saved results.json",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure the --only benchmarks, then write the report from this saved "
        "results.json with their entries replaced (every other benchmark's kept as it is)",
    )
    args = parser.parse_args(argv)
    if args.merge is not None and (args.render is not None or not args.only):
        parser.error("--merge needs --only (the benchmarks to measure again), not --render")
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        md_path, plot_path = args.out_dir / "BENCHMARKS.md", args.out_dir / "plot.png"
    elif args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="cw-bench-smoke-"))
        md_path, plot_path = tmp / "BENCHMARKS.md", tmp / "plot.png"
    else:
        md_path, plot_path = ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "plot.png"

    if args.render is not None:
        run = json.loads(args.render.read_text())
    else:
        run = _measure(args.only or list(BENCHMARKS), smoke=args.smoke)
        if args.merge is not None:
            run = merge_runs(json.loads(args.merge.read_text()), run)
        plot_path.with_name("results.json").write_text(json.dumps(run, indent=1) + "\n")
    errors: dict[str, str] = dict(run["errors"])
    print()
    print(report.text(run["results"], REPORTS))
    try:
        report.plot(run["results"], REPORTS, plot_path)
        link = os.path.relpath(plot_path, md_path.parent)
        md_path.write_text(report.markdown(run, REPORTS, plot_link=link))
    except Exception as exc:  # the report is part of the bench: breaking it fails the run
        errors["report"] = f"{type(exc).__name__}: {exc}"
    print()
    print(f"wrote {md_path} and {plot_path}; the run took {sum(run['durations'].values()):.0f} s")
    if errors:
        for name, message in errors.items():
            print(f"BENCHMARK BROKEN: {name}: {message}", file=sys.stderr)
        return 1
    return 0


def _measure(names: list[str], *, smoke: bool) -> dict[str, Any]:
    """Run the benchmarks one after another; return the run: figures, errors, conditions."""
    work_dir = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    conditions: dict[str, dict[str, Any]] = {}
    for name in names:
        limit_s = BENCHMARKS[name].smoke_s if smoke else BENCHMARKS[name].full_s
        others = report.other_processes()
        if others:
            say(f"{name}: note: {others} other Celery / pytest processes are running")
        conditions[name] = {
            "load_before": os.getloadavg()[0],
            "others": others,
            "date": report.utc_now(),
        }
        started = time.monotonic()
        say(f"{name}: starting ({'smoke' if smoke else 'full'})")
        try:
            results[name] = _run_child(name, smoke, work_dir, limit_s)
        except _ChildFailed as exc:
            errors[name] = str(exc)
            say(f"{name}: FAILED: {exc}")
        durations[name] = time.monotonic() - started
        conditions[name]["load_after"] = os.getloadavg()[0]
        say(f"{name}: done in {durations[name]:.1f} s")
    return {
        "smoke": smoke,
        "machine": report.machine(),
        "durations": durations,
        "conditions": conditions,
        "errors": errors,
        "results": results,
    }


def merge_runs(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`saved` with the benchmarks `new` measured replaced by `new`'s figures, durations,
    conditions (each with its date) and errors; the rest, and the machine, as saved."""
    if bool(saved["smoke"]) != bool(new["smoke"]):
        raise SystemExit("--merge: one run is a smoke run and the other is not")
    fresh = set(new["durations"])
    same = {k: v for k, v in saved["machine"].items() if k != "date"}
    if same != {k: v for k, v in new["machine"].items() if k != "date"}:
        say("merge: note: the saved run was measured on another machine or software versions")
    for name in fresh:
        new["conditions"][name].setdefault("date", new["machine"]["date"])

    def merged(key: str) -> dict[str, Any]:
        kept = {k: v for k, v in saved[key].items() if k not in fresh}
        return {**kept, **new[key]}

    keys = ("durations", "conditions", "errors", "results")
    return {**saved, **{key: merged(key) for key in keys}}


class _ChildFailed(Exception):
    """A benchmark process failed, timed out or wrote no figures."""


def _run_child(name: str, smoke: bool, work_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run one benchmark in its own process group; stop the whole group if it overruns."""
    out = work_dir / f"{name}.json"
    log_dir = work_dir / name
    args = [
        sys.executable, "-m", "benchmarks.child", name,
        "--out", str(out), "--log-dir", str(log_dir),
    ]  # fmt: skip
    if smoke:
        args.append("--smoke")
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise _ChildFailed(f"timed out after {timeout_s:g} s (logs in {log_dir})") from None
    except BaseException:
        _stop_group(proc)
        raise
    if code != 0:
        raise _ChildFailed(f"exited with {code} (logs in {log_dir})")
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise _ChildFailed(f"wrote no figures: {exc}") from None
    return result


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark (it stops its workers), then SIGKILL its process group."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=TERM_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this run started: workers, redis
    proc.wait(timeout=10)

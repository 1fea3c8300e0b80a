"""Benchmarks of cancel-worker against the sandbox exchange with scaled limits (issue 7).

`python -m benchmarks` runs every benchmark in one go and writes BENCHMARKS.md and
benchmarks/plot.png; `python -m benchmarks --smoke` is the CI-sized run of the same code.
Each benchmark runs in its own process (see `benchmarks.child`), because the service reads
its configuration from the environment once, at import.

A benchmark is one module: `run(smoke=, work_dir=)` measures and returns its figures, and
`REPORT` (a `benchmarks.report.Report`, at the end of the module) says what they mean: its
goals, its section of BENCHMARKS.md, its tables, plot panels and method. `benchmarks.report`
only assembles the parts; `benchmarks.fmt` formats tables and numbers for all of them. Adding
a benchmark: a new module, and its line in `benchmarks.cli.BENCHMARKS` (run and report order).
"""

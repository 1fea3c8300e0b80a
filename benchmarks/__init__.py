"""Benchmarks of cancel-worker against the sandbox exchange with scaled limits (issue 7).

`python -m benchmarks` runs every benchmark in one go and writes BENCHMARKS.md and
benchmarks/plot.png; `python -m benchmarks --smoke` is the CI-sized run of the same code.
Each benchmark runs in its own process (see `benchmarks.child`), because the service reads
its configuration from the environment once, at import.
"""

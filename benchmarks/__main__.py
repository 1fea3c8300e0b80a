"""`python -m benchmarks [--smoke]`: run every benchmark, print the table, write the report."""

from benchmarks.cli import main

raise SystemExit(main())

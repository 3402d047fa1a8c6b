"""The `make bench-*` benchmarks, one module each, run from the repository root as
`python -m bench.<name>`. They share bench/results.py (the JSON file in bench-results/, percentile,
to_ms) and the helpers the tests use (tests/support/); bench/measurements.py turns the JSON files
into docs/measurements.md's tables."""

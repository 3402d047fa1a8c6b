"""What the tests and the benchmark scripts share: ports, waiting, server processes, SSE, the error
shape, a real Redis and the lesson loader. Benchmarks run as `python scripts/x.py` import it with
`scripts/` as their first path entry; pytest gets it from `pythonpath` in pyproject.toml."""

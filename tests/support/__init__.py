"""What the tests and the benchmarks share: ports, waiting, server processes, SSE, the error shape,
a real Redis and the lesson loader. Imported as `tests.support.<module>` from the repository root:
pytest has the root on its path (pyproject.toml), a benchmark runs as `python -m bench.<name>`."""

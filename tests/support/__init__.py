"""Helpers only the tests use: the error shape, SSE, a real Redis and PostgreSQL, Docker, the
lessons' fixtures. What benchmarks use too lives in the root's support package."""

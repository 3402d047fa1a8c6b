"""What the tests and the benchmarks both need: free ports, waiting, server processes, the lesson
loader, commands on PATH, a local OTLP collector, lesson 07's Compose project and lesson 08's
servers as processes. Installed with the course's packages (pyproject.toml), imported as
`support.<module>`. Test-only helpers stay in tests/support/, and no benchmark imports those.

The standard library is enough to import this package (bench/first_answer.py runs it before .venv
exists, from the repository root)."""

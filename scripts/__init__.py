"""What the Makefile calls. A package only so that tests and benchmarks import a script's functions
as `scripts.<name>` (the Makefile runs them as files)."""

"""Lesson 04, sandboxed tools: its four steps (step1_sandbox.py to step4_api.py) and the production
API (sandboxed_tools.py), each run with `python -m lesson04.NAME` (make lesson-04 STEP=K)."""

"""Lesson 05's batch jobs: the contract between the orchestrator and the worker (job.py), the worker
itself (worker.py, run as `python -m research_agent.worker`) and its answer styles (styles.py)."""

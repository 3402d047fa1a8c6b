"""Lesson 02, the research agent: its five steps (step1_agent.py to step5_cache.py), each run with
`python -m lesson02.stepK_name` (make lesson-02 STEP=K). Steps 4 and 5 import step 3 by name."""

"""Lesson 02's agent as a module (agent.py): the agent of code/02_step2_habits.py, which
code/02_step3_api.py and code/02_step4_cache.py serve."""

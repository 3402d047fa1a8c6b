"""Lesson 01's modules, one per topic of docs/01-agent-api.md, imported by its steps
(code/lesson01/step*.py) and its production version (code/lesson01/production_api.py):

    agent.py            step 1: the agent every step serves, a prompt and a chat model
    request_context.py  step 2: an id for every request, and JSON log lines that carry it
    errors.py           step 4: one error shape for every failure, and a deadline on the model
    shutdown.py         step 5: SIGTERM without losing an answer or cutting one silently
    body_limit.py, cors.py, nesting.py, openapi.py: what the production version adds
"""

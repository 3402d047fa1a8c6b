"""Lesson 11: the research agent's evals, a gate in CI (`make evals`, `python -m lesson11`).
The steps of docs/11-evals.md (code/lesson11/step*.py) arrive here; one module per part:

    dataset.json   the cases: what good behaviour is, each with an id, a kind and a reason
    planted/       notes with instructions planted in them: test data the search reads too
    model.py       the deterministic model the evals run offline (and one an injection works on)
    compose.py     the agent under test, composed as the service composes it, and its worlds
    traces.py      the spans of a request (in memory), as a trajectory, an answer and a cost
    evaluators.py  trajectory (agentevals), approval, status, facts, citations, no_leak, budget
    judge.py       an LLM as judge (openevals), only with a real model
    runner.py      the cases through the service's API, in process
    report.py      pass rates, intervals, the gate against a baseline, the table, the HTML page
    gate.py        make evals: the suite, the table and summary, the report, the exit status
    phoenix.py     lesson 09's viewer: spans read back from it, results logged as an experiment
    baselines/     pass rates per model, written by `make evals-baseline`
"""

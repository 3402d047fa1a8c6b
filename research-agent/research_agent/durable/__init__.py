"""Durable runs (lesson 10): a run is rows in PostgreSQL, not a process.

store.py     the tables (runs with their lease, events, decisions, tool results), migrated once
approvals.py the human in the loop: LangChain's HumanInTheLoopMiddleware, decisions checked
idempotent.py run_python keyed by (run, call): a resumed step reads the result, never reruns it
runs.py      the loop every replica runs: claim a run's lease, continue it from its checkpoint
streams.py   a run's event stream: woken by LISTEN/NOTIFY, bounded per owner and in total

Nothing in the research agent's core imports this package; lesson 10 composes it.
"""

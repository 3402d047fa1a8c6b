"""Lesson 07's modules, imported by code/lesson07/event_agents.py and code/lesson07/gateway.py:

contract.py   the settings, topics, envelope and Redis keys both sides share
access.py     who may ask the gateway, and how much: the Host, a student's token, the limits
acks.py       what is acked, and when; the dead-letter topic
claims.py     a long answer keeps its claim
progress.py   the progress agent's effect
trace.py      every delivery and outcome as it happens (`make lesson-07-trace`)
tracing.py    the events in a trace (lesson 09)
"""

"""Lesson 10's agent, which every step of docs/10-durable-runs.md builds on:

agent.py  lesson 04's run_python in its sandbox, and a person who approves each call first
"""

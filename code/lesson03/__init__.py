"""Lesson 03, containers: its Dockerfiles and Compose file are the research agent's own
(research-agent/); this folder holds the lesson's make targets (lesson.mk)."""

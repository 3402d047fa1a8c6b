"""Lesson 09, traces: its four steps (step1_spans.py to step4_ingest.py), each run with
`python -m lesson09.stepK_name` (make lesson-09 STEP=K), and the stack's Compose override
(compose.traces.yaml) with its write-only ingest (ingest.cfg)."""

"""What the service tells about itself (lesson 02): the Prometheus metrics and the JSON logs
(metrics.py), and the request ids every log line and answer carries (request_ids.py). Lesson 09's
traces are in tracing/."""

"""The limits behind research_agent/access/quotas.py, one module for each thing limited: requests
per window (rate.py), failed keys per address (auth_failures.py), model tokens per budget
window (budget.py) and open streams (streams.py). They all count in counters.py, in Redis or in this
process, and answer with the RateLimit fields of fields.py."""

"""Lesson 01's step-2 modules, one per topic of docs/01-agent-api.md, imported by
code/01_production_api.py:

    request_context.py  a request id per request, and the JSON log lines that carry it
    openapi.py          the OpenAPI document says what the API really sends
    deadline.py         the deadline on each model call, and what its failures become
    nesting.py          a bound on how deeply a JSON value may nest
    cors.py             CORS from settings
"""

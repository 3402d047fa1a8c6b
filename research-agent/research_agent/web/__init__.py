"""The HTTP edge (lesson 02): the course's error shape (error_shape.py), the service's errors and
their handlers (errors.py), the ASGI middleware (middleware.py), the body limit (body_limit.py) and
numbers in headers (header_numbers.py)."""

"""Numbers in request headers (Content-Length, Last-Event-ID), read one way by every service.

`str.isdigit()` says yes to more than 0-9: a header arrives as latin-1, so the byte 0xB2 is `²`,
which isdigit() accepts and int() refuses; and a header of 5,000 ASCII digits passes isdigit() and
then trips Python's limit on the digits int() converts. Either was a 500 with a traceback. Here a
number is 1 to 18 ASCII digits (below 2**63, what any count, size or event id here fits in), and
anything else is the client's 400 in the course's error shape, naming the header.
"""

import re

from .error_shape import ApiError

MAX_DIGITS = 18
_NUMBER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")  # a class, not \d: ASCII digits only


class InvalidHeader(ApiError):
    """400 invalid_header: a header that must be a whole number is not one."""

    def __init__(self, name: str):
        super().__init__(
            400, "invalid_header", f"{name} must be a whole number of 1 to {MAX_DIGITS} digits 0-9"
        )


def header_number(value: str | bytes | None, name: str) -> int | None:
    """The header's value as a whole number; None when it is absent (or empty); InvalidHeader
    when it is anything else."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text == "":
        return None
    if _NUMBER.fullmatch(text) is None:
        raise InvalidHeader(name)
    return int(text)

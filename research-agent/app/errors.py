"""Errors the service reports to clients, each with an HTTP status and a snake_case type."""


class AppError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, error_type: str | None = None):
        super().__init__(message)
        self.message = message
        if error_type:
            self.error_type = error_type


class NotReadyError(AppError):
    status_code = 503
    error_type = "not_ready"


class UpstreamError(AppError):
    """The model provider or the search backend failed."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeoutError(AppError):
    """The model provider, the search backend or the whole request took too long."""

    status_code = 504
    error_type = "timeout"

"""The course's error shape: {"error": {"type", "message", "request_id", ...}}."""


def assert_error(response, status: int, error_type: str) -> dict:
    """Assert the status, the shape and the type, and that no stack trace leaks; return `error`."""
    assert response.status_code == status, response.text
    assert "json" in response.headers["content-type"], response.headers
    error = response.json()["error"]
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["request_id"] == response.headers["x-request-id"], error
    assert "Traceback" not in response.text
    return error

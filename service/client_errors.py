"""One log line, not a traceback, for each request BentoML refuses as the client's fault.

BentoML logs every 4xx it raises from request validation with `logger.error(...,
exc_info=True)`: a full pydantic/Starlette traceback per bad request, at ERROR,
so a client that sends bad requests can flood the log and bury real errors.
The client already got a 400 that says what was wrong; the server log needs
one line that it happened. 5xx keep their tracebacks.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger of `bentoml._internal.server.http_app.log_exception`, which
# BentoML's new-style service app calls for every failed request.
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def is_client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, ValidationError):
        return True  # BentoML answers these with 400
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500


class ClientErrorsInOneLine(logging.Filter):
    """Rewrites a client-error record to INFO with the reason, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if is_client_error(exc):
            reason = (
                f"{exc.error_count()} validation error(s)"
                if isinstance(exc, ValidationError)
                else str(exc).splitlines()[0]
            )
            record.msg = f"{record.msg}: client error, %s"
            record.args = (*(record.args or ()), reason)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def log_client_errors_in_one_line() -> None:
    logging.getLogger(BENTOML_REQUEST_LOGGER).addFilter(ClientErrorsInOneLine())

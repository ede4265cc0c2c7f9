"""One log line, not a traceback, for each request BentoML refuses by design.

BentoML logs every 4xx it raises from request validation, and every request
its batching sheds under overload (503), with `logger.error(...,
exc_info=True)`: a full traceback per request, at ERROR, so bad clients or a
load spike flood the log and bury real errors. The client already got an
answer that says what happened; the server log needs one line that it did.
Other 5xx keep their tracebacks.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException, ServiceUnavailable
from pydantic import ValidationError

# The logger of `bentoml._internal.server.http_app.log_exception`, which
# BentoML's new-style service app calls for every failed request.
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def is_client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, ValidationError):
        return True  # BentoML answers these with 400
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500


def _one_line(record: logging.LogRecord, what: str, reason: str, level: int) -> None:
    record.msg = f"{record.msg}: {what}, %s"
    record.args = (*(record.args or ()), reason)
    record.exc_info = None
    record.exc_text = None
    record.levelno, record.levelname = level, logging.getLevelName(level)


class ClientErrorsInOneLine(logging.Filter):
    """Rewrites a client-error record to INFO (a shed request to WARNING), without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            _one_line(record, "shed", str(exc).splitlines()[0], logging.WARNING)
        elif is_client_error(exc):
            reason = (
                f"{exc.error_count()} validation error(s)"
                if isinstance(exc, ValidationError)
                else str(exc).splitlines()[0]
            )
            _one_line(record, "client error", reason, logging.INFO)
        return True


def log_client_errors_in_one_line() -> None:
    logging.getLogger(BENTOML_REQUEST_LOGGER).addFilter(ClientErrorsInOneLine())

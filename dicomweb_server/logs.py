"""Structured logging, configured once by the command line.

``text`` is for people at a terminal; ``json`` (one object per line) for log collectors.
Modules log through ``logging.getLogger(__name__)`` and pass structured fields with
``extra={...}``; both formats carry them.

Every record emitted while an HTTP request or a DIMSE association is handled also
carries its ``request_id`` or ``association_id``: the fronts bind the id to a
:mod:`contextvars` variable (:func:`bind_request`, :func:`bind_association`) and
:class:`ContextFilter`, on the handler, copies it into each record.  A filter on the
handler rather than on a logger sees the records of every library (SQLAlchemy, pydicom)
too.  Request threads of gunicorn and association threads of pynetdicom each run in
their own context, so one id never leaks into another's lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from contextvars import ContextVar, Token
from typing import TextIO

from .config import LogSettings

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_association_id: ContextVar[str | None] = ContextVar("association_id", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def bind_request(request_id: str) -> Token[str | None]:
    """Tag every record logged in this context with ``request_id``; undo with :func:`unbind`."""
    return _request_id.set(request_id)


def bind_association(association_id: str) -> Token[str | None]:
    """Tag every record logged in this context (a DIMSE association's thread)."""
    return _association_id.set(association_id)


def unbind(token: Token[str | None]) -> None:
    """Restore the id a :func:`bind_request` or :func:`bind_association` replaced."""
    token.var.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


class ContextFilter(logging.Filter):
    """Adds ``request_id`` / ``association_id`` of the current context to each record.

    A value given explicitly in ``extra`` wins (a summary logged from another thread).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", _request_id), ("association_id", _association_id)):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def make_handler(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """The one handler of the process: ``log.format``, with the context ids."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(settings: LogSettings) -> None:
    handler = make_handler(settings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # pynetdicom logs every PDU at INFO and Alembic every plugin at start-up; our own
    # handlers log one summary per association and per migration instead.
    for chatty in ("pynetdicom", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

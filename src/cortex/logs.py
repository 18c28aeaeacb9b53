"""Logging set-up: readable lines on a terminal, one JSON object per line otherwise."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Literal

LogFormat = Literal["auto", "json", "text"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _HandOff(logging.handlers.QueueHandler):
    """Puts records on the queue as they are: formatting and writing happen on the
    listener's thread, off the request path (the gateway logs a line per request).
    Safe because our records' arguments are plain values nobody changes afterwards."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a new one)."""
    global _listener  # QueueListener.stop fails when called twice: forget it once stopped
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(_stop_listener)


def setup_logging(fmt: LogFormat = "auto", level: int = logging.INFO) -> None:
    global _listener  # one writer thread per process, replaced on a second call
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"
        )
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    _stop_listener()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    # No line we write names its caller, thread or process: don't collect them for every
    # record (the logging HOWTO's "Optimization" section); that was half the cost of the
    # gateway's line per request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [_HandOff(records)]
    root.setLevel(level)
    # Client libraries log every request at INFO: noise next to our own request lines.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

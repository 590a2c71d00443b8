"""One log line per event, to stderr, with UTC timestamps: text for people (the default), or with
-log-format json one JSON object per line for log shippers."""
import logging
import re
import sys
import time

import gevent.local
import simplejson

#: the narration convention ("job web-1: starting -> running"): the job a line is about
_JOB_LINE = re.compile(r"^(?:layer 0: )?job ([A-Za-z0-9_.-]{1,128}):")


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", "host_id", "job_id", "request_id"} on one line
    (the traceback, if any, as "exception"). The host id is the agent's, once known; the job id
    is the job the line is about (from the record's `job_id`, or the "job ID:" it starts with);
    the request id that of the HTTP request being served (set_request_id)."""

    def __init__(self):
        super().__init__()
        self.host_id = None

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
                 f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                 "logger": record.name, "message": message}
        if self.host_id:
            entry["host_id"] = self.host_id
        job = getattr(record, "job_id", None) or _job_of(message)
        if job:
            entry["job_id"] = job
        request_id = getattr(record, "request_id", None) or getattr(_request, "id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return simplejson.dumps(entry)


def _job_of(message: str):
    match = _JOB_LINE.match(message)
    return match.group(1) if match else None


_json = JsonFormatter()

#: the request the current greenlet serves (each request is served by a greenlet of its own)
_request = gevent.local.local()


def set_request_id(request_id):
    """The id of the request this greenlet serves now, on its JSON log lines (None: none)."""
    _request.id = request_id


def set_host_id(host_id: str):
    """The agent's id, for JSON lines from now on."""
    _json.host_id = host_id


def configure_logging(level: str = "info", fmt: str = "text"):
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter = _json
    else:
        formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: "
                                      "%(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the HTTP access log is narration of every request: debug only
    logging.getLogger("host.access").setLevel(logging.DEBUG if level == "debug"
                                              else logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    # urllib3 warns of every retry (e.g. while this host's etcd member starts); failures that matter
    # reach us as exceptions and are logged by the code that saw them
    logging.getLogger("urllib3").setLevel(logging.ERROR)

"""One log line per event, to stderr, with UTC timestamps."""
import logging
import sys
import time


def configure_logging(level: str = "info"):
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the HTTP access log is narration of every request: debug only
    logging.getLogger("host.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    for noisy in ("urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

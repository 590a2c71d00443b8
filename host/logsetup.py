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
    logging.getLogger("host.access").setLevel(logging.DEBUG if level == "debug"
                                              else logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    # urllib3 warns of every retry (e.g. while this host's etcd member starts); failures that matter
    # reach us as exceptions and are logged by the code that saw them
    logging.getLogger("urllib3").setLevel(logging.ERROR)

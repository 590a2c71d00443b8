"""Drives `flynn-host run -i -t` under a pseudo-terminal, in a plain process (no gevent: the hub
does not watch a pty master well). Prints a JSON summary for tests/test_cli.py.
usage: python tests/pty_driver.py FLYNN_HOST ADDR IMAGE"""
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

flynn_host, addr, image = sys.argv[1:4]
master, slave = pty.openpty()


def set_size(rows, cols):
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


set_size(30, 100)
before = termios.tcgetattr(slave)
# The job reports each size it waits for, polling its own terminal: an initial size that never
# arrived, or a resize that did not, fails the step at its deadline.
script = ("trap 'echo got-int; exit 3' INT; "
          "until [ \"$(stty size 2>/dev/null)\" = '30 100' ]; do sleep 0.05; done; "
          "echo initial-size-ok; "
          "until [ \"$(stty size)\" = '40 120' ]; do sleep 0.05; done; echo new-size-ok; "
          "read x; echo got-$x; while :; do sleep 0.1; done")
proc = subprocess.Popen([sys.executable, flynn_host, "run", "-i", "-t", "-H", addr, image,
                         "sh", "-c", script], stdin=slave, stdout=slave, stderr=slave,
                        start_new_session=True)
seen = b""


def read_until(text: bytes, timeout=30):
    global seen
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            seen += os.read(master, 65536)
    return text in seen


steps = {}
# the terminal size we had as the job started reaches it
steps["sized"] = read_until(b"initial-size-ok")
set_size(40, 120)
proc.send_signal(signal.SIGWINCH)
steps["resized"] = read_until(b"new-size-ok")
os.write(master, b"two\r")  # our terminal is raw: the job's terminal echoes and ends the line
steps["stdin"] = read_until(b"got-two")
os.write(master, b"\x03")  # Ctrl-C, as a terminal in raw mode sends it
steps["ctrl-c"] = read_until(b"got-int")
try:
    code = proc.wait(30)
except subprocess.TimeoutExpired:
    proc.kill()
    code = None
print(json.dumps({"steps": steps, "exit": code, "restored": termios.tcgetattr(slave) == before,
                  "output": seen.decode(errors="replace")}))

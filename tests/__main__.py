"""The test runner: `python -m tests [nose2 arguments]`.

Patches gevent first (the agent's code runs under gevent in tests too), runs nose2 over tests/,
and ends with the plain line `N passed, N failed, N skipped` counted from nose2's own results;
the exit status is non-zero on any failure or error.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

import nose2  # noqa: E402
from nose2 import result as outcomes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OutcomeCounter:
    """A nose2 hook receiver counting every test outcome (load errors count as failures)."""

    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def testOutcome(self, event):
        if event.outcome == outcomes.PASS and event.expected:
            self.passed += 1
        elif event.outcome == outcomes.SKIP:
            self.skipped += 1
        elif event.outcome == outcomes.FAIL and event.expected:
            self.passed += 1  # an expected failure
        elif event.outcome == outcomes.SUBTEST and event.exc_info is None:
            pass  # a passing subtest; its test is counted on its own
        else:
            self.failed += 1


def main() -> int:
    counter = OutcomeCounter()
    program = nose2.discover(argv=["nose2", "-s", os.path.join(REPO, "tests"), "-t", REPO,
                                   *sys.argv[1:]],
                             exit=False, extraHooks=[("testOutcome", counter)])
    ok = program.result is not None and program.result.wasSuccessful() and counter.failed == 0
    total = counter.passed + counter.failed + counter.skipped
    if total == 0:
        counter.failed += 1  # a run that ran nothing is a failure, not a pass
        ok = False
    sys.stderr.flush()
    print(f"{counter.passed} passed, {counter.failed} failed, {counter.skipped} skipped",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

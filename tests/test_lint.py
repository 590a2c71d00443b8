"""ruff over the whole tree, with the project's small configuration (ruff.toml), as part of the
suite: CI runs the README's test command, so it runs this too."""
import os
import subprocess
import sys
import unittest

from tests.support import REPO


class LintTest(unittest.TestCase):
    def test_ruff_finds_nothing(self):
        ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
        self.assertTrue(os.access(ruff, os.X_OK), f"ruff is not installed at {ruff} "
                        "(pip install '.[test]'; bin/test does)")
        result = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

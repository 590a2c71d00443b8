"""A headless Chromium driven through selenium, for the dashboard's tests and its benchmark:
Debian's `chromium` and `chromium-driver` (bin/test installs both) and Python's `selenium` (the
test extra). A missing one fails loudly, never skips: the dashboard is tested in a real browser
or not at all.

Selenium is given both binaries, so that it never looks for (or downloads) a driver of its own;
the browser is told not to use a proxy and not to reach out on its own (updates, sync, field
trials): the only requests it makes are the page's, to the agent under test.
"""
from __future__ import annotations

import os
import shutil

#: the binaries of Debian's packages
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAME = "chromedriver"


def chromium(width: int = 1400, height: int = 1000):
    """A new headless Chromium (a selenium WebDriver); quit() it when done. Its console is kept
    (driver.get_log("browser")), so that a test can look for Content-Security-Policy
    violations."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise AssertionError("Python's selenium is required for the dashboard's tests "
                             "(pip install '.[test]'; bin/test does)") from e
    binary = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = shutil.which(DRIVER_NAME)
    if binary is None or driver is None:
        raise AssertionError(
            "Debian's chromium and chromium-driver are required for the dashboard's tests "
            f"(found chromium: {binary}, chromedriver: {driver}); bin/test installs them "
            "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--no-first-run",
                     "--no-default-browser-check", "--no-proxy-server", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-default-apps", "--disable-field-trial-config",
                     "--password-store=basic"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def policy_violations(driver) -> list:
    """Console messages of the page that tell of its Content-Security-Policy (or Trusted
    Types) refusing something: a load from elsewhere, inline code, markup from a string."""
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or
            "Trusted Type" in entry["message"]]

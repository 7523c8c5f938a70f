"""Debian's Chromium, headless, driven over the DevTools protocol by Playwright (no browser download): a page's
console errors, the state of its Plotly charts, and a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu")


@contextmanager
def chromium():
    """A Chromium process started with FLAGS; yields Playwright's Browser connected to it over CDP."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                "about:blank"], stderr=subprocess.PIPE, text=True)
    try:
        endpoint = None
        for line in process.stderr:  # Chromium names its DevTools endpoint on stderr once it listens
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                endpoint = match[1]
                break
        assert endpoint, f"{CHROMIUM} exited ({process.poll()}) without a DevTools endpoint"
        with sync_playwright() as playwright:
            browser = playwright.chromium.connect_over_cdp(endpoint)
            yield browser
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


# Per Plotly chart: its trace names, and what it drew (SVG layers of bars and lines, heatmap images).
CHART_STATE = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => ({
    id: div.id,
    traces: (div._fullData || []).map(t => t.name),
    svgs: div.querySelectorAll('svg.main-svg').length,
    bars: div.querySelectorAll('g.point path').length,
    lines: div.querySelectorAll('g.scatterlayer path.js-line').length,
    heatmaps: div.querySelectorAll('g.heatmaplayer image').length,
    legend: Array.from(div.querySelectorAll('.legendtext')).map(t => t.textContent),
}))"""


def render(page_path: Path, screenshot: Path, width: int = 1400) -> dict:
    """Opens the page, waits until its charts drew, and returns {console_errors, charts}; saves a full-page PNG."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".every(div => div._fullLayout)", timeout=30_000)
        charts = {chart.pop("id"): chart for chart in page.evaluate(CHART_STATE)}
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        page.close()
    return {"console_errors": errors, "charts": charts}

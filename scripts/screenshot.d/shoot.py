"""The publishing load and the browser of scripts/screenshot (Python's standard library only).

Waits for both workers, opens the dashboard of the first in headless Chromium through
chromedriver (the options of tests/dashboard.rs), publishes through both workers for the given
seconds, and saves a screenshot of the page.
"""

import argparse
import base64
import json
import math
import random
import time
import urllib.error
import urllib.request


def request(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def wait_ready(worker, deadline):
    while time.monotonic() < deadline:
        try:
            if request("GET", f"http://{worker}/healthz")["status"]:
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"screenshot: worker {worker} did not answer /healthz")


class Browser:
    """One WebDriver session, as tests/dashboard.rs opens it."""

    def __init__(self, driver):
        self.base = f"http://{driver}"
        deadline = time.monotonic() + 15
        while True:
            try:
                request("GET", f"{self.base}/status")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise SystemExit("screenshot: chromedriver did not start")
                time.sleep(0.2)
        args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"]
        session = request("POST", f"{self.base}/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": args}}}})
        self.session = f"{self.base}/session/{session['value']['sessionId']}"

    def go(self, url):
        request("POST", f"{self.session}/url", {"url": url})

    def run(self, script):
        return request("POST", f"{self.session}/execute/sync", {"script": script, "args": []})["value"]

    def screenshot(self):
        return base64.b64decode(request("GET", f"{self.session}/screenshot")["value"])

    def quit(self):
        request("DELETE", self.session)


def publish_load(workers, tick):
    """One round of the load: every metric through one worker or the other, an alert at times."""
    t = tick / 10
    for index, worker in enumerate(workers):
        source = f"http://{worker}"
        wave = math.sin(t / 6 + index)
        metrics = [
            {"name": "api.latency_ms", "value": round(80 + 25 * wave + random.uniform(-8, 8), 1), "unit": "ms", "labels": {"service": "checkout"}},
            {"name": "api.latency_ms", "value": round(35 + 10 * math.cos(t / 4 + index) + random.uniform(-4, 4), 1), "unit": "ms", "labels": {"service": "search"}},
            {"name": "api.requests", "value": round(1200 + 400 * wave + random.uniform(-60, 60)), "unit": "1/s", "labels": {"service": "checkout"}},
            {"name": "queue.depth", "value": max(0, round(15000 + 9000 * math.sin(t / 9 + index) + random.uniform(-500, 500)))},
        ]
        request("POST", f"{source}/api/metrics", metrics)
    if tick % 80 == 40:
        severity = ["warning", "critical", "info"][(tick // 80) % 3]
        message = {
            "warning": "checkout latency p99 above 120 ms for 3 samples",
            "critical": "queue.depth above 24k: consumers falling behind",
            "info": "deploy of search 2.14.1 finished",
        }[severity]
        request("POST", f"http://{workers[(tick // 80) % 2]}/api/alerts", {"severity": severity, "message": message, "labels": {"service": "checkout"}})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", required=True)
    parser.add_argument("--driver", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--output", required=True)
    options = parser.parse_args()
    workers = options.workers.split(",")
    for worker in workers:
        wait_ready(worker, time.monotonic() + 30)
    browser = Browser(options.driver)
    try:
        browser.go(f"http://{workers[0]}/")
        end = time.monotonic() + options.seconds
        tick = 0
        while time.monotonic() < end:
            publish_load(workers, tick)
            tick += 1
            time.sleep(0.1)
        status = browser.run("return document.getElementById('status').className;")
        charts = browser.run("return document.querySelectorAll('#charts .chart').length;")
        if status != "live" or charts < 4:
            raise SystemExit(f"screenshot: the page is not showing live traffic (status {status}, {charts} charts)")
        with open(options.output, "wb") as file:
            file.write(browser.screenshot())
        print(f"screenshot: {tick} rounds published through {len(workers)} workers over {options.seconds:.0f} s, {charts} charts")
    finally:
        browser.quit()


if __name__ == "__main__":
    main()

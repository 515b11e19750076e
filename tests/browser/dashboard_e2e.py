#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver),
against a running stack. Standard library only.

    dashboard_e2e.py BASE_URL ADMIN_TOKEN API_KEY SCREENSHOT_DIR

Logs in (after a wrong token is refused), opens the app, finds a user, reads the history,
refunds an entry and sees the balance change, adds credits by hand, sees credits added through
the API appear without a reload, adds credits of a second credit type and sees both balances
and the history filtered by type, adds a webhook endpoint (a receiver on 127.0.0.1: the stack
allows private endpoints) and sees it listed, its test ping delivered and correctly signed,
sets the app's and a user's balance alert thresholds, checks the page fits 390 px, that no
request left the origin and that no script error was logged; saves a screenshot of each view.
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
CHROMIUM = os.environ.get("TALLY_CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TALLY_CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
# How long a live update may take to show (the page polls every 3 s).
LIVE_WAIT_SECONDS = 15


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def http(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Browser:
    def __init__(self, driver_url):
        self.driver = driver_url
        status, body = http("POST", f"{driver_url}/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,900"]},
        }}})
        check(status == 200, f"could not start a browser session: {body}")
        self.session = f"{driver_url}/session/{body['value']['sessionId']}"

    def call(self, method, path, body=None):
        status, answer = http(method, self.session + path, body)
        if status != 200:
            raise Failure(f"webdriver {method} {path}: {answer}")
        return answer["value"]

    def go(self, url):
        self.call("POST", "/url", {"url": url})

    def find(self, css):
        found = self.call("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(found, dict) or ELEMENT not in found:
            raise Failure(f"no element {css!r} on {self.url()}: {found}")
        return found[ELEMENT]

    def type(self, css, text):
        element = self.find(css)
        self.call("POST", f"/element/{element}/clear", {})
        self.call("POST", f"/element/{element}/value", {"text": text})

    def click(self, css):
        self.call("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css):
        # The live refresh may replace the element between finding and reading it: find it again.
        for attempt in range(5):
            try:
                return self.call("GET", f"/element/{self.find(css)}/text")
            except Failure as failure:
                if not replaced(failure) or attempt == 4:
                    raise
                time.sleep(0.1)

    def js(self, script, *args):
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def url(self):
        return self.call("GET", "/url")

    def size(self, width, height):
        self.call("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, directory, name):
        png = base64.b64decode(self.call("GET", "/screenshot"))
        with open(os.path.join(directory, f"{name}.png"), "wb") as out:
            out.write(png)

    def logs(self, kind):
        for path in ("/se/log", "/log"):
            status, answer = http("POST", self.session + path, {"type": kind})
            if status == 200:
                return answer["value"]
        raise Failure(f"chromedriver gives no {kind} log")

    def quit(self):
        http("DELETE", self.session)


def replaced(failure):
    """Whether a webdriver call failed because the page replaced the element it named.

    Chromedriver says so as a "stale element reference", or, when the node is gone from the
    document while the call runs, as an "unknown error" from the inspector.
    """
    message = str(failure)
    return ("stale element reference" in message
            or "does not belong to the document" in message)


def wait_for(what, probe, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Failure as failure:
            # A page still loading after a click may not hold the element yet.
            if "no such element" not in str(failure) and not replaced(failure):
                raise
            last = failure
        else:
            if last:
                return last
        time.sleep(0.25)
    raise Failure(f"{what} did not happen within {seconds} s (last: {last!r})")


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that answers 204 to every delivery and keeps each one's headers and
    body in `received`."""

    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Receiver.received.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(base, token, api_key, shots):
    key = {"Authorization": f"Bearer {api_key}"}
    # Arrange: a few users with history, through the public API.
    for user, amount in [("alice", 500), ("bob", 50), ("carol", 75), ("alex", 10)]:
        status, body = http("POST", f"{base}/credits/add", {"user_id": user, "amount": amount,
                                                          "description": "Starter pack"}, key)
        check(status == 200, f"seeding {user}: {body}")
    status, spent = http("POST", f"{base}/credits/deduct", {"user_id": "alice", "amount": 120,
                                                            "description": "AI generation"}, key)
    check(status == 200, f"seeding a deduct: {spent}")

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    browser = None
    try:
        driver_url = f"http://127.0.0.1:{port}"
        wait_for("chromedriver start", lambda: http("GET", f"{driver_url}/status")[0] == 200
                 if _port_open(port) else False, 20)
        browser = Browser(driver_url)

        # A wrong token grants nothing.
        browser.go(f"{base}/dashboard")
        browser.type("#token", "not-the-admin-token")
        browser.click("button[type=submit]")
        check("not right" in browser.text("[role=alert]"), "a wrong token is refused")
        check(browser.js("return document.cookie") == "", "no cookie readable by scripts")
        browser.screenshot(shots, "login")

        # Log in.
        browser.type("#token", token)
        browser.click("button[type=submit]")
        wait_for("the apps view", lambda: "Apps" in browser.text("h1"), 10)
        check(token not in browser.url(), "the token never appears in a URL")
        browser.screenshot(shots, "apps")

        # Open the app, find a user.
        browser.click("#apps a")
        wait_for("the app view", lambda: "/dashboard/apps/" in browser.url(), 10)
        browser.type("#prefix", "ali")
        browser.click("form[role=search] button")
        wait_for("the search", lambda: "prefix=ali" in browser.url(), 10)
        users = browser.text("#users")
        check("alice" in users and "bob" not in users, f"search by prefix: {users}")
        browser.screenshot(shots, "app")
        browser.js("[...document.querySelectorAll('#users a')].find(a => a.textContent === 'alice').click()")
        wait_for("the user view", lambda: "/users/alice" in browser.url(), 10)
        check(browser.text("#balance") == "380", f"balance before the refund: {browser.text('#balance')}")
        history = browser.text("#history")
        check("AI generation" in history and "Starter pack" in history, f"history: {history}")
        browser.screenshot(shots, "user")

        # Refund 20 of the deduct, confirming.
        browser.js("[...document.querySelectorAll('#history tr')].find(r => r.textContent.includes('AI generation')).querySelector('a').click()")
        wait_for("the entry view", lambda: "/dashboard/entries/" in browser.url(), 10)
        browser.type("#refund-amount", "20")
        browser.type("#refund-description", "Failed generation")
        browser.click("input[name=confirm]")
        browser.screenshot(shots, "entry")
        browser.click("button.danger")
        browser.call("POST", "/alert/accept", {})
        wait_for("the refund's notice", lambda: "balance is now 400" in browser.js(
            "return (document.querySelector('[role=status]') || {}).textContent || ''"), 15)
        browser.click(".crumbs a:last-child")
        wait_for("the user view", lambda: "/users/alice" in browser.url(), 10)
        check(browser.text("#balance") == "400", f"balance after the refund: {browser.text('#balance')}")

        # Add credits by hand, with a description.
        browser.click("details summary")
        browser.type("#amount", "25")
        browser.type("#description", "Goodwill credit")
        browser.click("details button[type=submit]")
        wait_for("the manual add", lambda: browser.text("#balance") == "425", 15)
        check("dashboard" in browser.text("#history"), "the manual add shows source dashboard")

        # Credits added through the API appear without a reload.
        marker = browser.js("window.tallyMarker = 1; return window.tallyMarker")
        status, body = http("POST", f"{base}/credits/add", {"user_id": "alice", "amount": 5,
                                                             "description": "Live top-up"}, key)
        check(status == 200, f"live add: {body}")
        wait_for("the live update", lambda: "Live top-up" in browser.text("#history")
                 and browser.text("#balance") == "430", LIVE_WAIT_SECONDS)
        check(browser.js("return window.tallyMarker") == marker, "the page was not reloaded")

        # Credits of a second type, through the form: each type has its own balance.
        browser.click("details summary")
        check(browser.js("return document.querySelector('#credit-type').value") == "credits",
              "the form's credit type defaults to credits")
        browser.type("#credit-type", "image")
        browser.type("#amount", "15")
        browser.type("#description", "Image pack")
        browser.click("details button[type=submit]")
        wait_for("the image balance", lambda: browser.js(
            "return (document.querySelector('#balance-image') || {}).textContent") == "15", 15)
        check(browser.text("#balance") == "430", f"the credits balance: {browser.text('#balance')}")
        check("image" in browser.text("#history"), "history rows show the credit type")
        browser.screenshot(shots, "user-types")
        # The history filter offers the user's types.
        browser.js("var s = document.querySelector('#credit_type'); s.value = 'image';"
                   " s.form.submit()")
        wait_for("the credit type filter", lambda: "credit_type=image" in browser.url(), 10)
        history = browser.text("#history")
        check("Image pack" in history and "Live top-up" not in history, f"filtered: {history}")

        # Other views.
        app_url = browser.js("return document.querySelector('.crumbs a:last-child').href")
        # Issue an API key: shown once, and it works.
        browser.go(app_url)
        browser.click("form[action$='/keys'] button")
        new_key = wait_for("the new key", lambda: browser.js(
            "return (document.querySelector('#new-key') || {}).textContent"), 10)
        check(new_key.startswith("tk_") and new_key not in browser.url(), f"new key: {new_key}")
        status, _ = http("GET", f"{base}/credits/balance?user_id=alice", None,
                         {"Authorization": f"Bearer {new_key}"})
        check(status == 200, f"the new key works ({status})")
        browser.screenshot(shots, "new-key")

        browser.go(app_url + "/events")
        wait_for("the events view", lambda: "Webhook events" in browser.text("h1"), 10)
        browser.screenshot(shots, "events")

        # Add a webhook endpoint for two event types: its secret is shown once, it is listed.
        receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}/tally-events"
        browser.go(app_url)
        browser.js("[...document.querySelectorAll('summary')].find(s => s.textContent.includes('Add an endpoint')).click()")
        browser.type("#endpoint-url", receiver_url)
        browser.click("input[name='event.balance.low']")
        browser.click("input[name='event.credits.added']")
        browser.type("#endpoint-description", "Billing emails")
        browser.click("form[action$='/endpoints'] button")
        secret = wait_for("the endpoint's secret", lambda: browser.js(
            "return (document.querySelector('#new-secret') || {}).textContent"), 10)
        check(secret.startswith("whsec_") and secret not in browser.url(), f"secret: {secret}")
        browser.screenshot(shots, "endpoint-secret")
        status, listed = http("GET", f"{base}/webhook_endpoints", None, key)
        check(status == 200 and [e["url"] for e in listed["endpoints"]] == [receiver_url],
              f"the API lists the endpoint: {listed}")
        browser.go(app_url)
        endpoints = browser.text("#endpoints")
        check(receiver_url in endpoints and "credits.added, balance.low" in endpoints
              and "enabled" in endpoints, f"endpoints: {endpoints}")
        check(secret not in browser.js("return document.body.innerHTML"), "the secret is shown once")

        # Its page: send a test ping, see its delivery.
        browser.click("#endpoints a")
        wait_for("the endpoint view", lambda: "/endpoints/" in browser.url(), 10)
        browser.click("#send-test")
        wait_for("the test's notice", lambda: "ping is on its way" in browser.js(
            "return (document.querySelector('[role=status]') || {}).textContent || ''"), 10)
        check("ping" in browser.text("#deliveries"), f"deliveries: {browser.text('#deliveries')}")
        # The workers deliver it; the page follows without a reload.
        wait_for("the ping's delivery", lambda: "succeeded" in browser.text("#deliveries"), LIVE_WAIT_SECONDS)
        browser.screenshot(shots, "endpoint")
        check(len(Receiver.received) == 1, f"the receiver got {len(Receiver.received)} deliveries")
        headers, body = Receiver.received[0]
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        signing_key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = "v1," + base64.b64encode(hmac.new(signing_key, signed, hashlib.sha256).digest()).decode()
        check(expected in headers["webhook-signature"].split(), f"signature: {headers}")
        check(json.loads(body)["type"] == "ping" and json.loads(body)["id"] == headers["webhook-id"],
              f"the ping's envelope: {body!r}")

        # The app's default thresholds, then alice's own.
        browser.go(app_url)
        browser.js("[...document.querySelectorAll('summary')].find(s => s.textContent.includes('default thresholds')).click()")
        browser.type("#alerts-thresholds", "100, 1000")
        browser.click("form[action$='/alerts'] button")
        wait_for("the saved thresholds", lambda: "notice=thresholds_saved" in browser.url(), 10)
        check("credits" in browser.text("#thresholds") and "100" in browser.text("#thresholds"),
              f"thresholds: {browser.text('#thresholds')}")
        status, alerts = http("GET", f"{base}/credits/alerts", None, key)
        check(status == 200 and alerts["thresholds"] == [1000, 100] and alerts["source"] == "app",
              f"the API reads the app's default thresholds: {alerts}")
        browser.js("document.querySelector('#endpoints').scrollIntoView()")
        browser.screenshot(shots, "thresholds")
        browser.go(app_url + "/users/alice")
        check("default" in browser.text("#user-thresholds"), "alice has the app's default")
        browser.js("[...document.querySelectorAll('summary')].find(s => s.textContent.includes('own thresholds')).click()")
        browser.type("#user-alerts-thresholds", "50")
        browser.click("form[action$='/alerts'] button")
        wait_for("alice's own thresholds", lambda: "own list" in browser.text("#user-thresholds"), 10)
        status, alerts = http("GET", f"{base}/credits/alerts?user_id=alice", None, key)
        check(status == 200 and alerts["thresholds"] == [50] and alerts["source"] == "user",
              f"the API reads alice's own thresholds: {alerts}")

        # Phone width: nothing scrolls sideways.
        browser.go(app_url + "/users/alice")
        browser.size(390, 844)
        width = browser.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        check(width[0] <= width[1], f"at 390 px the page is {width[0]} px wide (viewport {width[1]})")
        browser.screenshot(shots, "user-phone")
        browser.size(1280, 900)

        # Log out ends the session.
        browser.click(".logout button")
        wait_for("the login form", lambda: browser.js("return !!document.querySelector('#token')"), 10)
        browser.go(app_url)
        check(browser.js("return !!document.querySelector('#token')"), "after log out, views ask to log in")

        # No script errors, no request to another origin.
        errors = [entry for entry in browser.logs("browser") if entry.get("level") == "SEVERE"
                  and "401" not in entry.get("message", "")]
        check(not errors, f"browser errors: {errors}")
        origin = urllib.parse.urlsplit(base)
        foreign = set()
        for entry in browser.logs("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = urllib.parse.urlsplit(message["params"]["request"]["url"])
                if url.scheme in ("http", "https", "ws", "wss") and url.netloc != origin.netloc:
                    foreign.add(url.geturl())
        check(not foreign, f"requests to another origin: {sorted(foreign)}")
    finally:
        if browser is not None:
            browser.quit()
        driver.terminate()
        driver.wait(timeout=10)
        receiver.shutdown()


def _port_open(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main():
    base, token, api_key, shots = sys.argv[1:5]
    os.makedirs(shots, exist_ok=True)
    started = time.monotonic()
    try:
        run(base.rstrip("/"), token, api_key, shots)
    except Failure as failure:
        print(f"dashboard browser test: FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"dashboard browser test: passed in {time.monotonic() - started:.1f} s; screenshots in {shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

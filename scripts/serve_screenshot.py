"""Drive a running `lego serve` page in headless Chromium and save a screenshot.

    python scripts/serve_screenshot.py http://127.0.0.1:7860/ docs/serve.png [--sample N] [--action "cut onion"]

Chromium (Debian's `chromium` package) is driven over the DevTools protocol on a pipe
(--remote-debugging-pipe), so nothing but the standard library is needed: the page loads, a sample
frame is picked, the actions are typed, Generate is clicked, and once the gallery shows the
action frames the page is captured. Prints "action frames shown: N"; exit 1 when none appear.
Nothing leaves the machine: background networking, updates and first-run traffic are off.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-default-apps", "--remote-debugging-pipe"]


class Chromium:
    """A headless Chromium and its DevTools protocol over fds 3 (commands in) and 4 (answers out)."""

    def __init__(self, width: int, height: int):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="lego-chromium-")

        def fds():                                   # in the child: the two pipes as fds 3 and 4
            commands, answers = os.dup(to_child_r), os.dup(from_child_w)   # (neither can clobber the other)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise SystemExit("no chromium: apt-get install chromium")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     pass_fds=(3, 4, to_child_r, from_child_w), preexec_fn=fds,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.environ.get("LEGO_CHROMIUM_LOG", os.devnull), "w"),
                                     start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer, self._id, self.session = b"", 0, None

    def send(self, method: str, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:                                  # answers and events arrive NUL-terminated, in order
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for(browser: Chromium, expression: str, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = browser.js(expression)
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


# The page's parts, found by what a user sees (labels and button text), not by gradio's class names.
PICK_SAMPLE = """(() => {{
  const rows = [...document.querySelectorAll('.gallery-item, tr.tr-body, button.example')];
  if (rows.length <= {n}) return false; rows[{n}].click(); return true; }})()"""
SET_ACTIONS = """(() => {{
  const box = [...document.querySelectorAll('label')].find(l => l.textContent.includes('Actions, one per line'))
              ?.querySelector('textarea');
  if (!box) return false;
  box.value = {text}; box.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"""
FRAME_READY = "!!document.querySelector('img') && [...document.querySelectorAll('img')].some(i => i.naturalWidth > 0)"
CLICK_GENERATE = """(() => {
  const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Generate');
  if (!b) return false; b.click(); return true; })()"""
RESULTS = """(() => {
  const g = [...document.querySelectorAll('[data-testid="block-label"], label, span')]
            .find(e => e.textContent.trim().startsWith('Action frames'))?.closest('.block');
  if (!g) return 0;
  return [...g.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length; })()"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--sample", type=int, default=0, help="which sample frame to pick")
    p.add_argument("--action", default=None, help="actions to type (default: the sample's own label)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--timeout", type=float, default=240)
    args = p.parse_args(argv)
    browser = Chromium(args.width, args.height)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        browser.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.send("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                     deviceScaleFactor=1, mobile=False)
        browser.send("Page.enable")
        browser.send("Page.navigate", url=args.url)
        wait_for(browser, CLICK_GENERATE.replace("b.click(); ", ""), 60, "the page")
        wait_for(browser, PICK_SAMPLE.format(n=args.sample), 30, "the sample frames")
        wait_for(browser, FRAME_READY, 30, "the frame")
        time.sleep(1)                                # the sample fills the actions box too: type after it
        if args.action:
            wait_for(browser, SET_ACTIONS.format(text=json.dumps(args.action)), 10, "the actions box")
            time.sleep(0.5)
        wait_for(browser, CLICK_GENERATE, 10, "the Generate button")
        shown = wait_for(browser, RESULTS, args.timeout, "the action frames")
        time.sleep(1)                                # let the captions and code settle
        png = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
        with open(args.out, "wb") as f:
            f.write(png)
        print(f"action frames shown: {shown}")
        return 0
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())

"""A fake OpenAI-compatible chat server on 127.0.0.1 for the curate tests and benchmark.

Implements ``POST /v1/chat/completions`` (plain JSON, no streaming) with scripted misbehaviour per
action label: 429 with Retry-After, 500, slow answers (past the client's timeout), malformed JSON,
refusals, empty or off-topic answers, 401 echoing the API key back (as real servers partly do), and
dropped connections. It counts requests and answers per query (the last user message), so tests can
check that every sample was asked once and that no cached answer was asked for again.

In-process (tests)::

    with FakeLLM(latency=0.0) as llm:
        llm.script("wash plate", ["429", "ok"])
        ... lego curate --base-url {llm.url} ...
        llm.answered[query]

As a process (benchmark)::  python tests/curate_server.py --latency 0.05   (prints the base URL)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOURS = ("ok", "429", "500", "503", "slow", "malformed", "refusal", "empty", "offtopic", "401", "400", "drop",
              "nousage")


def action_of(query: str) -> str:
    m = re.match(r"Action: (.*)", query)
    return m.group(1).strip() if m else ""


def good_answer(label: str) -> str:
    return (f"The person reaches forward with the right hand and begins to {label} on the counter in the centre "
            f"of the view, while the left hand steadies it; the state of the object changes as the action ends.")


class FakeLLM:
    def __init__(self, latency: float = 0.0, retry_after: str = "0", slow_seconds: float = 3.0, port: int = 0):
        self.latency = latency
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()   # every request, per query
        self.answered: Counter[str] = Counter()   # 200 answers with a good description, per query
        self.total = 0
        self.authorizations: set[str] = set()
        self.bodies: list[dict] = []
        self.scripts: dict[str, deque] = defaultdict(deque)  # label -> behaviours, one per request
        self.default = "ok"
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None   # clients that hang up are expected
        self._thread: threading.Thread | None = None

    # --- control ---
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, label: str, behaviours: list[str]) -> None:
        for b in behaviours:
            assert b in BEHAVIOURS, b
        with self.lock:
            self.scripts[label].extend(behaviours)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.answered.clear()
            self.total = 0

    def start(self) -> "FakeLLM":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- serving ---
    def _next(self, label: str) -> str:
        with self.lock:
            q = self.scripts.get(label)
            return q.popleft() if q else self.default

    def _handler(self):
        llm = self
        ThreadingHTTPServer.request_queue_size = 128

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # headers and body go out at once (no 40 ms delayed-ACK stall)

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                req = json.loads(raw)
                query = req["messages"][-1]["content"]
                label = action_of(query)
                auth = self.headers.get("Authorization", "")
                with llm.lock:
                    llm.requests[query] += 1
                    llm.total += 1
                    llm.authorizations.add(auth)
                    llm.bodies.append(req)
                    llm.in_flight += 1
                    llm.max_in_flight = max(llm.max_in_flight, llm.in_flight)
                try:
                    self._answer(req, query, label, auth, llm._next(label))
                finally:
                    with llm.lock:
                        llm.in_flight -= 1

            def _answer(self, req, query, label, auth, how):
                if llm.latency:
                    time.sleep(llm.latency)
                if how == "429":
                    return self._send(429, b'{"error": {"message": "rate limited", "type": "requests"}}',
                                      {"Retry-After": llm.retry_after})
                if how in ("500", "503"):
                    return self._send(int(how), b'{"error": {"message": "server error"}}')
                if how == "401":
                    key = auth.removeprefix("Bearer ")
                    msg = json.dumps({"error": {"message": f"Incorrect API key provided: {key}",
                                                "code": "invalid_api_key"}})
                    return self._send(401, msg.encode())
                if how == "400":
                    return self._send(400, b'{"error": {"message": "context length exceeded"}}')
                if how == "slow":
                    time.sleep(llm.slow_seconds)
                if how == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if how == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ {"message": ')
                text = {
                    "refusal": "I'm sorry, but I can't help with that request.",
                    "empty": "",
                    "offtopic": "The weather today is sunny with a light breeze and a few clouds "
                                "over the hills to the north.",
                }.get(how, good_answer(label))
                if how in ("ok", "slow", "nousage"):
                    with llm.lock:
                        llm.answered[query] += 1
                prompt_tokens = sum(len(m["content"].split()) for m in req["messages"])
                body = {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": req.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                }
                if how != "nousage":
                    body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                                     "total_tokens": prompt_tokens + len(text.split())}
                self._send(200, json.dumps(body).encode())

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    llm = FakeLLM(latency=args.latency, port=args.port).start()
    print(llm.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        llm.stop()


if __name__ == "__main__":
    sys.exit(main())

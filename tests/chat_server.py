"""A local stand-in for an OpenAI-compatible chat-completions server (vLLM, llama.cpp, OpenAI).

``POST /v1/chat/completions`` answers with ``answer(body)``'s text in the protocol's JSON
(``choices[0].message.content``, ``usage``), and with ``logprobs.content[0].top_logprobs``
over "Yes" and "No" when the request asks for logprobs and ``logprobs`` is set (``"refuse"``: 400
to any request that asks for them, as some servers do). Before the
scripted answers, ``script`` lists how the next requests go wrong, one entry per request:

* an int: that HTTP status with a JSON error body (401 refuses, 429 rate-limits, 500...);
* ``"timeout"``: answer only after ``delay`` seconds (longer than the client waits);
* ``"nonsense"``: 200 with a body that is not JSON;
* ``"no-choices"``: 200 with JSON that lacks ``choices``.

``fail_after``: from that many answered requests on, every request gets 503 (a server that
dies mid-run). With ``key`` set, a request without ``Authorization: Bearer KEY`` gets 401.
Every request's JSON body is recorded in ``ChatServer.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class ChatServer:
    def __init__(self, answer: Callable[[dict], str], *, script: list | None = None, key: str | None = None,
                 logprobs: bool | str = True, delay: float = 1.0, fail_after: int | None = None):
        self.answer, self.script, self.key = answer, list(script or []), key
        self.logprobs, self.delay, self.fail_after = logprobs, delay, fail_after
        self.requests: list[dict] = []
        self.answered = 0
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # A client that gave up on a slow answer leaves a broken pipe behind: expected, not news.
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self):
        with self.lock:
            if self.script:
                return self.script.pop(0)
            if self.fail_after is not None and self.answered >= self.fail_after:
                return 503
            self.answered += 1
            return None


class _Handler(BaseHTTPRequestHandler):
    server_state: ChatServer

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with state.lock:
            state.requests.append(body)
        if not self.path.endswith("/v1/chat/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        if state.key is not None and self.headers.get("Authorization") != f"Bearer {state.key}":
            self._send(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
            return
        if body.get("logprobs") and state.logprobs == "refuse":
            self._send(400, json.dumps({"error": {"message": "logprobs is not supported by this server"}}).encode())
            return
        fault = state.next_fault()
        if isinstance(fault, int):
            self._send(fault, json.dumps({"error": {"message": f"scripted status {fault}"}}).encode())
            return
        if fault == "timeout":
            time.sleep(state.delay)
        if fault == "nonsense":
            self._send(200, b"<html>gateway says hello</html>", "text/html")
            return
        if fault == "no-choices":
            self._send(200, json.dumps({"object": "chat.completion", "choices": []}).encode())
            return
        text = state.answer(body)
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs") and state.logprobs:
            yes = text.strip().lower().startswith("yes")
            top = [{"token": "Yes", "logprob": -0.1 if yes else -2.5}, {"token": "No", "logprob": -2.5 if yes else -0.1}]
            choice["logprobs"] = {"content": [{"token": text.split()[0] if text.split() else "", "logprob": -0.1,
                                               "top_logprobs": top}]}
        prompt = " ".join(m.get("content", "") for m in body.get("messages", []))
        reply = {"id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                 "choices": [choice],
                 "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}}
        self._send(200, json.dumps(reply).encode())

"""A real local HTTP server that answers like an OpenAI-compatible endpoint, from a script.

``ScriptedEndpoint(reply)`` listens on 127.0.0.1 (a free port) in a thread. ``reply`` gets
each chat-completions request body and returns either a list of ``n`` assistant messages
(wrapped into a completion with usage, token ids and logprobs, as vLLM answers) or an
``(http_status, json_body)`` pair to answer with as is. ``requests`` keeps every body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any]], "list[dict[str, Any]] | tuple[int, dict[str, Any]]"]


def completion(body: dict[str, Any], messages: list[dict[str, Any]], k: int) -> dict[str, Any]:
    choices = []
    total = 0
    for i, msg in enumerate(messages):
        text = msg.get("content") or json.dumps(msg.get("tool_calls"))
        ids = [ord(c) % 97 for c in text][:50] or [0]
        total += len(ids)
        choices.append({"index": i, "message": {"role": "assistant", **msg},
                        "finish_reason": "stop", "token_ids": ids,
                        "logprobs": {"content": [{"token": str(t), "logprob": -0.5,
                                                  "bytes": None, "top_logprobs": []}
                                                 for t in ids]}})
    return {"id": f"chatcmpl-{k}", "object": "chat.completion", "created": 0,
            "model": body.get("model"), "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": total,
                      "total_tokens": 10 + total}}


class ScriptedEndpoint:
    def __init__(self, reply: Reply, *, model: str = "tiny", max_model_len: int = 2048) -> None:
        self.reply = reply
        self.model = model
        self.max_model_len = max_model_len
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": endpoint.model, "object": "model", "created": 0,
                         "owned_by": "test", "max_model_len": endpoint.max_model_len}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with endpoint._lock:
                    endpoint.requests.append(body)
                    k = len(endpoint.requests)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                out = endpoint.reply(body)
                if isinstance(out, tuple):
                    self._send(out[0], out[1])
                else:
                    self._send(200, completion(body, out, k))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "BadRequestError", "code": status},
                    "message": message}

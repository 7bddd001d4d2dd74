"""A scripted OpenAI-compatible upstream for the wrapper's and the proxy's tests: a real
HTTP server (stdlib) that answers ``POST /v1/chat/completions`` deterministically, streamed
or not, with ``n`` choices, usage and logprobs on request.

The policy: when the last message is a user message, choice ``i`` calls the tool ``read``
with ``{"path": "file{seed + i}.txt"}`` (fresh random tool-call ids each time, as real
servers give); after a tool result, it answers ``done: <the tool's content>``. Tokens are
the words of the answer. ``GET /requests`` lists the requests received (headers and body).

    python upstream.py PORT [API_KEY]     # prints "ready" once it listens
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "scripted-1"
received: list[dict[str, Any]] = []


def answer(request: dict[str, Any], i: int, rng: random.Random) -> dict[str, Any]:
    last = request["messages"][-1]
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"done: {last['content']}"}
    path = f"file{(request.get('seed') or 0) + i}.txt"
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": f"call_{rng.getrandbits(48):012x}", "type": "function",
        "function": {"name": "read", "arguments": json.dumps({"path": path})}}]}


def words(msg: dict[str, Any]) -> list[str]:
    text = msg["content"] or msg["tool_calls"][0]["function"]["arguments"]
    return text.split(" ")


def logprobs_of(tokens: list[str]) -> dict[str, Any]:
    return {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()),
                         "top_logprobs": []} for t in tokens]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm and
        # the client's delayed ACK hold every answer back ~40 ms (servers such as uvicorn
        # set it too)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: object) -> None:
        pass

    def send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/requests":
            self.send_json(200, received)
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        request = json.loads(body)
        received.append({"path": self.path, "headers": dict(self.headers.items()),
                         "body": request})
        key = sys.argv[2] if len(sys.argv) > 2 else None
        if key and self.headers.get("authorization") != f"Bearer {key}":
            self.send_json(401, {"error": {"message": "bad key", "type": "auth"}})
            return
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        n = request.get("n") or 1
        # user "deterministic": the same request gets the same bytes (ids and time too)
        fixed = request.get("user") == "deterministic"
        rng = random.Random(hashlib.sha256(body).hexdigest() if fixed
                            else secrets.token_hex(8))
        msgs = [answer(request, i, rng) for i in range(n)]
        usage = {"prompt_tokens": 10 * len(request["messages"]),
                 "completion_tokens": sum(len(words(m)) for m in msgs)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rid = f"chatcmpl-{rng.getrandbits(32):08x}"
        created = 0 if fixed else int(time.time())
        if not request.get("stream"):
            choices = []
            for i, m in enumerate(msgs):
                c: dict[str, Any] = {"index": i, "message": m, "finish_reason":
                                     "tool_calls" if m.get("tool_calls") else "stop"}
                if request.get("logprobs"):
                    c["logprobs"] = logprobs_of(words(m))
                choices.append(c)
            self.send_json(200, {"id": rid, "object": "chat.completion", "created": created,
                                 "model": MODEL, "choices": choices, "usage": usage})
            return
        self.stream(request, msgs, usage, rid, created)

    def stream(self, request: dict[str, Any], msgs: list[dict[str, Any]],
               usage: dict[str, int], rid: str, created: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> None:
            data = json.dumps({"id": rid, "object": "chat.completion.chunk",
                               "created": created, "model": MODEL, "choices": choices,
                               **extra})
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()

        for i, m in enumerate(msgs):
            chunk([{"index": i, "delta": {"role": "assistant", "content": ""}}])
            if m.get("tool_calls"):
                call = m["tool_calls"][0]
                args = call["function"]["arguments"]
                chunk([{"index": i, "delta": {"tool_calls": [{
                    "index": 0, "id": call["id"], "type": "function",
                    "function": {"name": "read", "arguments": args[:5]}}]}}])
                chunk([{"index": i, "delta": {"tool_calls": [{
                    "index": 0, "function": {"arguments": args[5:]}}]}}])
            else:
                toks = words(m)
                for k, tok in enumerate(toks):
                    piece = tok if k == 0 else " " + tok
                    c: dict[str, Any] = {"index": i, "delta": {"content": piece}}
                    if request.get("logprobs"):
                        c["logprobs"] = logprobs_of([piece])
                    chunk([c])
            chunk([{"index": i, "delta": {}, "finish_reason":
                    "tool_calls" if m.get("tool_calls") else "stop"}])
        if (request.get("stream_options") or {}).get("include_usage"):
            chunk([], usage=usage)
        done = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        self.wfile.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()

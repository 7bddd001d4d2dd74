"""A real HTTP destination for the SDK's tests: ``POST /v1/events`` over a SQLite file,
answering as ``branchpoint serve`` does (200, 400 or 409 with the bad events listed under
``errors``, 503 for a store outage). Run: ``python http_store.py DB PORT``; it prints
``ready`` once it listens."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

from branchpoint.store.errors import ConflictingEvent, InvalidEvent, StoreUnavailable
from branchpoint.store.events import decode_event
from branchpoint.store.sqlite3_writer import Sqlite3Writer

writer = Sqlite3Writer(sys.argv[1])
lock = Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def answer(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["content-length"]))
        if self.path != "/v1/events":
            self.answer(404, {"detail": "not found"})
            return
        try:
            events = [decode_event(json.dumps(e), line=i + 1)
                      for i, e in enumerate(json.loads(raw))]
            with lock:
                res = writer.append(events, normalized=True)
        except InvalidEvent as exc:
            code = 409 if isinstance(exc, ConflictingEvent) else 400
            self.answer(code, {"detail": str(exc), "errors": [{
                "index": (exc.line or 1) - 1, "reason": exc.reason, "field": exc.field,
                "event_id": exc.event_id}]})
        except StoreUnavailable as exc:
            self.answer(503, {"detail": str(exc)})
        else:
            self.answer(200, {"stored": res.stored, "duplicates": res.duplicates})


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()

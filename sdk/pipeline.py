"""The recorder's delivery pipeline: what happens to an event after ``t.step()`` returns.

The agent's thread only appends to memory (:meth:`Pipeline.put`, a lock held for a few
hundred nanoseconds). Two background threads do the rest:

- the **worker** takes batches from the queue (by size, or after ``linger_s``), sends them
  to the sink, dead-letters what the store refuses for its content and sends the rest, and
  on an outage moves what it holds to the spool and retries from there with backoff;
- the **spooler** writes the overflow to the spool: events that arrived while the queue was
  full, or while the pipeline was *diverted* (see below).

Order. Every event gets a sequence number as it is accepted. While the pipeline is live,
events flow queue -> sink in that order. The first time an event cannot take that path (the
queue is full, or the destination failed) the pipeline becomes *diverted*: from then on new
events go to the overflow, never to the queue, until everything accepted before has been
delivered. The worker then delivers in sequence order: what is left in the queue (older than
any overflow), then the spool's segments (named by their first sequence number; the spooler
writes the overflow front first, so what is still in memory is always newer than what is on
disk), then the overflow's front directly once the spooler is idle and no segment is left.
So events of one trajectory reach the store in the order they were recorded, across spool
and live sends, and a child never arrives before its parent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from branchpoint.sdk.sinks import Outage, Refused, Rejection, Sink, TooLarge
from branchpoint.sdk.spool import DeadLetters, Segment, Spool
from branchpoint.store.errors import InvalidEvent
from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    ScoreAssigned,
    TreeClosed,
    decode_event,
    encode_event,
)

__all__ = ["Pipeline", "RecorderStats", "refused_with_dependants"]

log = logging.getLogger("branchpoint.sdk")

Item = tuple[int, Event]
NodeKey = tuple[str, str]


@dataclass(frozen=True)
class RecorderStats:
    """Counts since the recorder opened.

    ``queued``: accepted and still in memory; ``sent``: stored by the destination (first
    tries and re-sends); ``spooled``: written to the spool; ``resent``: sent from the spool
    (this process's or one a dead process left); ``dead_lettered``: refused for their
    content, in the dead-letter file; ``dropped``: lost because memory and disk were both
    full (logged); ``errors``: failures inside the recorder (logged); ``outages``: times
    the destination went from up to down.
    """

    queued: int
    sent: int
    spooled: int
    resent: int
    dead_lettered: int
    dropped: int
    errors: int
    outages: int


def refused_with_dependants(
    events: Sequence[Event], rejections: Sequence[Rejection],
    dead: dict[NodeKey, str], dead_trees: dict[str, str],
) -> dict[int, dict[str, Any]]:
    """Which events of a batch go to the dead letters: the refused ones and every event
    that depends on one (a child of a refused node, its execution or score, the closing of
    a tree whose root was refused), also on one refused in an earlier batch (``dead`` maps
    ``(tree_id, node_id)`` to the refused event's id and grows with this batch's).

    Returns ``{index: why}`` where ``why`` has ``reason``, ``field`` and ``depends_on``.
    """
    bad = {r.index: r for r in rejections if 0 <= r.index < len(events)}
    out: dict[int, dict[str, Any]] = {}
    for i, ev in enumerate(events):
        p = ev.payload
        why: dict[str, Any] | None = None
        r = bad.get(i)
        if r is not None:
            why = {"reason": r.reason, "field": r.field}
            if r.depends_on is not None and 0 <= r.depends_on < len(events):
                why["depends_on"] = events[r.depends_on].event_id
        else:
            culprit: str | None = None
            if isinstance(p, NodeCreated) and p.parent_id is not None:
                culprit = dead.get((ev.tree_id, p.parent_id))
            elif isinstance(p, ActionExecuted | ScoreAssigned):
                culprit = dead.get((ev.tree_id, p.node_id))
            elif isinstance(p, TreeClosed):
                culprit = dead_trees.get(ev.tree_id)
            if culprit is not None:
                why = {"reason": f"depends on the refused event {culprit!r}", "field": None,
                       "depends_on": culprit}
        if why is not None:
            out[i] = why
            if isinstance(p, NodeCreated):
                dead[(ev.tree_id, p.node_id)] = ev.event_id
                if p.parent_id is None:
                    dead_trees[ev.tree_id] = ev.event_id
    return out


class Pipeline:
    """Queue, overflow, worker and spooler for one destination (see the module doc)."""

    def __init__(self, sink: Sink, spool: Spool, dead_letters: DeadLetters, *,
                 queue_size: int = 10_000, overflow_size: int = 200_000,
                 batch_size: int = 1000, linger_s: float = 0.05,
                 backoff_s: tuple[float, float] = (0.05, 5.0), spool_chunk: int = 5000,
                 orphan_scan_s: float = 30.0) -> None:
        self._sink = sink
        self._spool = spool
        self._dead_letters = dead_letters
        self._queue_max = queue_size
        self._overflow_max = overflow_size
        self._batch = batch_size
        # a backlog goes out in larger batches where the destination takes them: fewer
        # transactions, and fewer lookups per event
        self._max_send = max(batch_size, getattr(sink, "max_batch", batch_size))
        self._linger = linger_s
        self._backoff_min, self._backoff_max = backoff_s
        self._spool_chunk = spool_chunk
        # the overflow stays in memory up to here, and the worker takes it from there; past it
        # (a destination slower than the agent for long), the spooler moves it to disk. A
        # spooled event costs the worker decoding it again: a burst the destination absorbs
        # within the bound stays in memory.
        self._spool_threshold = max(1, overflow_size * 3 // 4)
        self._orphan_scan_s = orphan_scan_s

        self._lock = threading.Lock()
        self._settled_cond = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._overflow: deque[Item] = deque()
        self._seq = 0  # events accepted
        self._settled = 0  # accepted events sent, spooled, dead-lettered or dropped
        self._diverted = False
        self._outage = False
        self._tries = 0  # sends begun (numbered from 1)
        self._failed_try = 0  # the latest-begun send that found the destination down
        self._retry_at = 0.0
        self._delay = self._backoff_min
        self._flushing = 0
        self._closing = False
        self._spooler_busy = False
        self._own_segments = 0  # segments this process wrote and has not re-sent yet
        self._inflight: list[Item] = []  # the batch the worker is sending
        self._dead: dict[NodeKey, str] = {}
        self._dead_trees: dict[str, str] = {}
        self._counts = dict.fromkeys(("sent", "spooled", "resent", "dead_lettered", "dropped",
                                      "errors", "outages"), 0)
        self._drop_logged = 0.0

        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._spool_wake = threading.Event()
        self._worker = threading.Thread(target=self._work, name="branchpoint-recorder",
                                        daemon=True)
        self._spooler = threading.Thread(target=self._spool_loop,
                                         name="branchpoint-spooler", daemon=True)
        self._worker.start()
        self._spooler.start()

    # --- the agent's side --------------------------------------------------------------

    def put(self, events: Sequence[Event]) -> None:
        """Accept events, in order; never blocks on I/O and never raises."""
        late: list[Item] = []
        with self._lock:
            n, first = len(events), self._seq + 1
            if not self._diverted and len(self._queue) + n <= self._queue_max:
                # the common case, in one go: all of them to the queue
                before = len(self._queue)
                self._queue.extend(zip(range(first, first + n), events, strict=True))
                self._seq += n
                if n and (before == 0 or before < self._batch <= before + n):
                    self._wake.set()  # a batch opens (its linger starts), or fills
                return
            if self._diverted and not self._closing and (
                    len(self._overflow) + n <= self._overflow_max):
                # a backlog: all of them to the overflow, in one go
                self._overflow.extend(zip(range(first, first + n), events, strict=True))
                self._seq += n
                wake_spooler = self._outage or len(self._overflow) >= self._spool_threshold
            else:
                wake_spooler = self._put_each(events, late)
        if late:
            # recorded after close(): no thread is left to send them, so they go to disk here
            self._write_segment(late)
        elif wake_spooler:
            self._spool_wake.set()

    def _put_each(self, events: Sequence[Event], late: list[Item]) -> bool:
        """:meth:`put` one event at a time, under ``_lock``: to the queue while it has
        room and nothing is diverted, else to the overflow, to ``late`` once closing, or
        dropped when the overflow is full. Returns whether to wake the spooler."""
        wake_spooler = False
        for event in events:
            self._seq += 1
            item = (self._seq, event)
            if not self._diverted and len(self._queue) < self._queue_max:
                self._queue.append(item)
                n = len(self._queue)
                if n in (1, self._batch):  # a batch opens (its linger starts), or fills
                    self._wake.set()
            elif self._closing:
                late.append(item)
            elif len(self._overflow) >= self._overflow_max:
                self._counts["dropped"] += 1
                self._settled += 1
                self._settled_cond.notify_all()
                self._log_drop()
            else:
                self._diverted = True
                self._overflow.append(item)
                wake_spooler = self._outage or len(self._overflow) >= self._spool_threshold
        return wake_spooler

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._drop_logged > 5.0:
            self._drop_logged = now
            log.error("branchpoint recorder: memory and spool are full; %d events dropped so "
                      "far", self._counts["dropped"])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted so far is stored by the destination, or safe in
        the spool while the destination is down (or dead-lettered, or counted as dropped).
        Returns False on timeout."""
        with self._lock:
            target = self._seq
            self._flushing += 1
            begun = self._tries
            if self._outage:
                self._retry_at = 0.0  # try the destination once more now
        self._wake.set()
        self._spool_wake.set()
        try:
            with self._settled_cond:
                # While the destination is down, the spool is as good as stored, once a
                # send begun since the flush began has failed (not one already under way:
                # the destination may have come back since).
                return self._settled_cond.wait_for(
                    lambda: self._settled >= target and (
                        self._own_segments <= 0 or self._closing
                        or (self._outage and self._failed_try > begun)), timeout)
        finally:
            with self._lock:
                self._flushing -= 1

    def count_error(self) -> None:
        """Count a failure the recorder's caller made or met (already logged)."""
        self._count("errors")

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(queued=len(self._queue) + len(self._overflow), **self._counts)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush (bounded), stop the threads, and spool whatever is still in memory so the
        next process re-sends it. Returns whether the flush completed."""
        done = self.flush(timeout)
        with self._lock:
            self._closing = True
            self._diverted = True
        self._stopped.set()
        self._wake.set()
        self._spool_wake.set()
        self._spooler.join(timeout=5.0)
        self._worker.join(timeout=5.0)
        with self._lock:
            # a worker still stuck in a send may or may not get its batch stored: spool it
            # too (re-sending is idempotent)
            stuck = self._inflight if self._worker.is_alive() else []
            left = sorted([*stuck, *self._queue, *self._overflow])
            self._queue.clear()
            self._overflow.clear()
        if left:
            self._write_segment(left)
        self._sink.close()
        self._spool.close()
        return done

    # --- shared helpers ------------------------------------------------------------------

    def _count(self, name: str, n: int = 1, *, settled: bool = False) -> None:
        with self._lock:
            self._counts[name] += n
            if settled:
                self._settled += n
                self._settled_cond.notify_all()

    def _write_segment(self, items: Sequence[Item]) -> None:
        """Spool items (in sequence order). A disk that refuses drops them, counted."""
        try:
            self._spool.write([(seq, encode_event(ev)) for seq, ev in items])
        except Exception as exc:
            log.error("branchpoint recorder: cannot write the spool in %s (%s); %d events "
                      "dropped", self._spool.folder, exc, len(items))
            self._count("dropped", len(items), settled=True)
        else:
            with self._lock:
                self._own_segments += 1
            self._count("spooled", len(items), settled=True)

    # --- the spooler -----------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            self._spool_wake.wait()
            self._spool_wake.clear()
            while True:
                with self._lock:
                    # a flush while the destination is up is the worker's to serve
                    urgent = self._outage or self._closing
                    if not self._overflow or not (
                            urgent or len(self._overflow) >= self._spool_threshold):
                        break
                    n = min(len(self._overflow), self._spool_chunk)
                    chunk = [self._overflow.popleft() for _ in range(n)]
                    self._spooler_busy = True
                try:
                    self._write_segment(chunk)
                finally:
                    with self._lock:
                        self._spooler_busy = False
                self._wake.set()
            with self._lock:
                if self._closing:
                    return
            if self._outage:
                # gather what arrives for a moment rather than write one file per event
                self._stopped.wait(self._linger)

    # --- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        self._resend_orphans()
        next_scan = time.monotonic() + self._orphan_scan_s
        while True:
            with self._lock:
                closing = self._closing
                outage, retry_at = self._outage, self._retry_at
                pending = len(self._queue)
                urgent = self._flushing > 0 or self._diverted
            if closing:
                return
            now = time.monotonic()
            if outage and now < retry_at:
                self._wake.wait(retry_at - now)
                self._wake.clear()
                continue
            if not urgent and pending < self._batch:
                self._wake.wait(self._linger if pending else 0.5)
                self._wake.clear()
            try:
                while self._step():
                    pass
                if self._diverted and not self._outage:
                    # waiting for the spooler to complete a segment (it wakes us)
                    self._wake.wait(self._linger)
                    self._wake.clear()
                if not self._outage and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self._orphan_scan_s
                    self._resend_orphans()
            except Exception:
                log.exception("branchpoint recorder: unexpected error in the worker")
                self._count("errors")
                self._enter_outage()

    def _step(self) -> bool:
        """One unit of delivery; True when there may be more to do right away."""
        if self._outage and time.monotonic() < self._retry_at:
            return False
        with self._lock:
            if self._closing:
                return False
            batch = [self._queue.popleft()
                     for _ in range(min(len(self._queue), self._max_send))]
            diverted = self._diverted
        if batch:
            self._send_live(batch)
            return True
        if not diverted:
            return False
        segments = self._spool.own_segments()
        if segments:
            return self._resend(segments[0])
        with self._lock:
            if self._spooler_busy:
                return False  # the spooler wakes us when its segment is complete
            if not self._overflow:
                self._diverted = False
                return False
            n = min(len(self._overflow), self._max_send)
            batch = [self._overflow.popleft() for _ in range(n)]
        self._send_live(batch)
        return True

    def _send_live(self, batch: list[Item]) -> None:
        with self._lock:
            self._inflight = batch
            self._tries += 1
            attempt = self._tries
        try:
            self._deliver([ev for _, ev in batch])
        except Outage as exc:
            self._enter_outage(exc, attempt)
            with self._lock:
                self._diverted = True
                rest = list(self._queue)
                self._queue.clear()
            with self._lock:
                self._inflight = []
            self._write_segment(batch + rest)
        else:
            self._leave_outage()
            with self._lock:
                self._inflight = []
                self._settled += len(batch)
                self._settled_cond.notify_all()

    def _resend(self, segment: Segment) -> bool:
        events: list[Event] = []
        unreadable: list[tuple[bytes, dict[str, Any]]] = []
        for _, line in Spool.read(segment):
            try:
                events.append(decode_event(line))
            except InvalidEvent as exc:
                unreadable.append((line, {"reason": exc.reason, "field": exc.field}))
        if unreadable:
            self._dead_letter(unreadable)
        with self._lock:
            self._tries += 1
            attempt = self._tries
        try:
            self._deliver(events, normalized=True)  # decode_event validated them
        except Outage as exc:
            self._enter_outage(exc, attempt)
            return False
        self._leave_outage()
        Spool.remove(segment)
        with self._lock:
            if segment.owner == self._spool.owner:
                self._own_segments -= 1
            self._counts["resent"] += len(events)
            self._settled_cond.notify_all()
        return True

    def _resend_orphans(self) -> None:
        """Send what processes that are gone left in the spool."""
        try:
            with self._spool.orphans() as segments:
                for seg in segments:
                    if not self._resend(seg):
                        return
        except OSError as exc:
            log.warning("branchpoint recorder: cannot read the spool in %s: %s",
                        self._spool.folder, exc)

    def _enter_outage(self, exc: Exception | None = None, attempt: int | None = None) -> None:
        """The destination is down, as the send numbered ``attempt`` found (default: the
        latest begun); a flush trusts the spool once a send it did not precede failed."""
        with self._lock:
            if not self._outage:
                self._counts["outages"] += 1
                log.warning("branchpoint recorder: %s is unavailable (%s); events go to the "
                            "spool in %s until it answers", self._sink.destination, exc,
                            self._spool.folder)
            self._outage = True
            self._failed_try = max(self._failed_try,
                                   self._tries if attempt is None else attempt)
            jitter = 0.5 + int.from_bytes(os.urandom(2)) / 131_070  # in [0.5, 1]
            self._retry_at = time.monotonic() + self._delay * jitter
            self._delay = min(self._delay * 2, self._backoff_max)
            self._settled_cond.notify_all()  # a flush now waits for the spool, not the sink
        self._spool_wake.set()

    def _leave_outage(self) -> None:
        if self._outage:
            with self._lock:
                self._outage = False
                self._delay = self._backoff_min
            log.info("branchpoint recorder: %s answers again", self._sink.destination)

    # --- delivery with refusals ------------------------------------------------------------

    def _deliver(self, events: list[Event], *, normalized: bool = False) -> None:
        """Send events in order; what the store refuses for its content (and what depends
        on it) goes to the dead letters, the rest is stored.

        Raises:
            Outage: the destination is down; nothing is known to be stored.
        """
        if not events:
            return
        known_dead = refused_with_dependants(events, [], self._dead, self._dead_trees) \
            if self._dead else {}
        if known_dead:
            self._dead_letter([(encode_event(events[i]), why)
                               for i, why in known_dead.items()])
            events = [e for i, e in enumerate(events) if i not in known_dead]
        self._send_all(events, normalized)

    def _send_all(self, events: list[Event], normalized: bool) -> None:
        if not events:
            return
        try:
            self._sink.send(events, normalized=normalized)
        except TooLarge:
            if len(events) == 1:
                self._dead_letter([(encode_event(events[0]), {
                    "reason": "larger than the destination's body limit", "field": None})])
                return
            self._send_halves(events, normalized)
            return
        except Refused as refusal:
            if any(r.index < 0 for r in refusal.rejections):
                if len(events) > 1:
                    self._send_halves(events, normalized)
                    return
                refusal = Refused([Rejection(0, r.reason, r.field)
                                   for r in refusal.rejections[:1]])
            why = refused_with_dependants(events, refusal.rejections, self._dead,
                                          self._dead_trees)
            self._dead_letter([(encode_event(events[i]), w) for i, w in why.items()])
            self._send_all([e for i, e in enumerate(events) if i not in why], normalized)
            return
        except Outage:
            raise
        except Exception as exc:
            log.exception("branchpoint recorder: the sink failed unexpectedly")
            self._count("errors")
            raise Outage(str(exc)) from exc
        self._count("sent", len(events))

    def _send_halves(self, events: list[Event], normalized: bool) -> None:
        mid = len(events) // 2
        self._send_all(events[:mid], normalized)
        self._send_all(events[mid:], normalized)

    def _dead_letter(self, entries: list[tuple[bytes, dict[str, Any]]]) -> None:
        if not entries:
            return
        try:
            self._dead_letters.write(entries)
        except OSError as exc:
            log.error("branchpoint recorder: cannot write dead letters to %s (%s); %d "
                      "refused events dropped", self._dead_letters.path, exc, len(entries))
            self._count("dropped", len(entries))
        else:
            log.warning("branchpoint recorder: %s refused %d events: %s",
                        self._sink.destination, len(entries), entries[0][1].get("reason"))
            self._count("dead_lettered", len(entries))


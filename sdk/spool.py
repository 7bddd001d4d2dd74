"""The recorder's disk: an append-only spool and a dead-letter file per destination.

Events wait in the spool while their destination is down or slow, and are re-sent from it
when it answers again, by this process or by the next one to open the same destination.

Layout of one destination's folder (see :func:`spool_folder`)::

    OWNER.lock                   held (flock) by the live process OWNER for its lifetime
    OWNER.000000000123.seg       a segment: complete, written once, renamed into place
    OWNER.000000000123.part      a segment being written (or cut short by a crash)
    dead-letters.jsonl           events the destination refused for their content

A segment holds one line per event, ``SEQ<TAB>EVENT-JSON``; ``SEQ`` is the order in which
the owner recorded the event, and a segment's name carries its first ``SEQ``, so a
process re-sends its segments in recording order. Segments are never appended to once
complete, so readers need no lock on them. Processes share a folder safely: each writes
only its own segments, re-sends only its own, and takes over another owner's segments only
after taking that owner's lock, which the kernel releases when the owner dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["DeadLetters", "Segment", "Spool", "spool_folder", "spool_root"]

log = logging.getLogger("branchpoint.sdk")

_SEGMENT = re.compile(r"^(?P<owner>[\w-]+)\.(?P<first>\d{12})\.(?P<kind>seg|part)$")
_LOCK = re.compile(r"^(?P<owner>[\w-]+)\.lock$")


def spool_root() -> Path:
    """Where spools live: ``$BRANCHPOINT_SPOOL_DIR``, else ``$XDG_CACHE_HOME/branchpoint/
    spool``, else ``~/.cache/branchpoint/spool``."""
    explicit = os.environ.get("BRANCHPOINT_SPOOL_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "branchpoint" / "spool"


def spool_folder(destination: str, root: Path | None = None) -> Path:
    """The folder of one destination (a URL without credentials): a readable slug and a
    hash of the whole destination, so two destinations never share a spool."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", destination)[-60:].strip("_") or "dest"
    h = hashlib.sha256(destination.encode()).hexdigest()[:12]
    return (root or spool_root()) / f"{slug}-{h}"


@dataclass(frozen=True)
class Segment:
    path: Path
    owner: str
    first: int


class Spool:
    """One process's view of a destination's spool folder.

    Raises (constructor):
        OSError: the folder cannot be created or locked.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lock_path = folder / f"{self.owner}.lock"
        self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    # --- writing ---------------------------------------------------------------------

    def write(self, items: Sequence[tuple[int, bytes]]) -> Segment:
        """Write ``(seq, event JSON)`` items as one complete segment.

        Raises:
            OSError: the disk refused (nothing is left behind as complete).
        """
        first = items[0][0]
        base = f"{self.owner}.{first:012d}"
        part, seg = self.folder / f"{base}.part", self.folder / f"{base}.seg"
        data = b"".join(b"%d\t%s\n" % (seq, line) for seq, line in items)
        fd = os.open(part, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(part, seg)
        return Segment(seg, self.owner, first)

    # --- reading ---------------------------------------------------------------------

    def _segments(self, owner: str | None) -> list[Segment]:
        out = []
        try:
            names = os.listdir(self.folder)
        except OSError as exc:  # the folder is gone: nothing is left to re-send from it
            log.error("branchpoint recorder: cannot list the spool %s: %s", self.folder, exc)
            return []
        for name in names:
            m = _SEGMENT.match(name)
            if m and (owner is None or m["owner"] == owner) and (
                    m["kind"] == "seg" or owner != self.owner):
                out.append(Segment(self.folder / name, m["owner"], int(m["first"])))
        return sorted(out, key=lambda s: s.first)

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.folder)
        except OSError:
            return []

    def own_segments(self) -> list[Segment]:
        """This process's complete segments, in recording order."""
        return self._segments(self.owner)

    @staticmethod
    def read(segment: Segment) -> list[tuple[int, bytes]]:
        """A segment's items in order. A last line cut short by a crash is left out: it
        was never reported as spooled."""
        try:
            data = segment.path.read_bytes()
        except FileNotFoundError:
            return []
        items = []
        for line in data.split(b"\n"):
            seq, sep, body = line.partition(b"\t")
            if sep and seq.isdigit():
                items.append((int(seq), body))
        if data and not data.endswith(b"\n") and items:
            items.pop()
        return items

    @staticmethod
    def remove(segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def has_own(self) -> bool:
        return bool(self.own_segments())

    @contextlib.contextmanager
    def orphans(self) -> Iterator[list[Segment]]:
        """Segments left by owners that are gone, in recording order per owner; their
        owners' locks are held until the block ends, so no other process takes them too.
        Owners whose lock cannot be taken are alive and are skipped."""
        held: list[tuple[int, Path]] = []
        segments: list[Segment] = []
        try:
            by_owner: dict[str, list[Segment]] = {}
            for seg in self._segments(None):
                if seg.owner != self.owner:
                    by_owner.setdefault(seg.owner, []).append(seg)
            lockless = {m["owner"] for n in self._names()
                        if (m := _LOCK.match(n)) and m["owner"] != self.owner}
            for owner in sorted(set(by_owner) | lockless):
                path = self.folder / f"{owner}.lock"
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                held.append((fd, path))
                # listed again under the lock: a previous taker may have sent them already
                segments.extend(self._segments(owner))
            yield segments
        finally:
            for fd, path in held:
                if not self._segments(path.name[: -len(".lock")]):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                os.close(fd)

    def close(self) -> None:
        """Release this process's lock; its file goes when no segment of ours is left."""
        if self._lock_fd < 0:
            return
        if not self.own_segments():
            with contextlib.suppress(OSError):
                self._lock_path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = -1
        with contextlib.suppress(OSError):  # an empty folder is left to no one
            self.folder.rmdir()


class DeadLetters:
    """``dead-letters.jsonl``: one line per refused event, with the destination's reason.
    Appends are whole lines under an exclusive lock, so processes may share the file."""

    _encoder = msgspec.json.Encoder()

    def __init__(self, folder: Path, destination: str) -> None:
        self.path = folder / "dead-letters.jsonl"
        self.destination = destination

    def write(self, entries: Sequence[tuple[bytes, dict[str, Any]]]) -> None:
        """Append ``(event JSON, why)`` entries; ``why`` holds reason, field, and the
        refused event it depends on when it was refused only for that.

        Raises:
            OSError: the disk refused.
        """
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = b"".join(
            self._encoder.encode({"at": at, "destination": self.destination, **why,
                                  "event": msgspec.Raw(event)}) + b"\n"
            for event, why in entries)
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every dead letter so far (for tests and tools)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [msgspec.json.decode(line) for line in data.splitlines() if line.strip()]

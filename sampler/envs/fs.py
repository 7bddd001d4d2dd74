"""``fs``: tidy up a small generated file system.

Each task is a directory tree generated from the task id and the ``difficulty`` option
(``intro``, ``easy``, ``medium`` default, ``hard``): a few top-level folders (``docs``, ``logs``...)
holding short text files whose lines are ``key value`` pairs (``tag red``, ``code 417``,
``owner ana``). The agent must find files by their content and reorganise them:

1. move every file that contains ``tag T`` into a new folder ``/T`` (1, 2 or 3 files);
2. either rename the file that contains ``code N`` (same folder, new name), or edit it
   (change one ``owner`` line), which needs reading it first; ``intro`` (one file to move,
   no second step: the level a model trained from scratch in minutes can learn, see the
   README's proof section) leaves this step out;
3. write ``/T/index.txt`` listing the moved files' names, sorted, one per line;

then ``submit``. That is at least six steps of exploration and change (five at ``intro``).

Tools: ``ls [PATH]``, ``cd PATH``, ``cat PATH``, ``find TEXT`` (every file containing
TEXT, as paths from the root), ``mkdir PATH``, ``mv SRC DST`` (into DST when it is a
folder, else rename; never overwrites), ``write PATH TEXT`` (create or replace; a
two-character ``\\n`` in TEXT is a line break) and ``submit``. ``/a/b`` is a path from the
root, ``a/b`` from the current folder; ``..`` stops at the root. Names use letters, digits,
``.``, ``_`` and ``-``. Errors start with ``error:``.

Check: one sub-goal per file to move (``moved NAME``), ``renamed`` or ``edited``,
``index``, and ``intact`` (no other file changed, no stray file), each of weight 1. Text
the agent writes is compared as a person reads it: the index line by line, ignoring each
line's surrounding whitespace and blank lines; the edited file ignoring whitespace at its
end (a trailing newline more or less is the same edit).

Backends with identical behaviour: ``backend="memory"`` (default; forks by snapshot) and
``backend="disk"``, a real directory in a :class:`~branchpoint.sampler.fork.Sandbox`
(forks by copying it). The disk backend is a jail: every path is resolved by this module
from validated names below the sandbox root, and a symbolic link found on the way (which
the tools never create) is refused rather than followed.
"""

from __future__ import annotations

import os
import random
import re
import stat
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from branchpoint.sampler.envs.base import (
    Check,
    Environment,
    Message,
    Outcome,
    SubGoal,
    ToolEnvironment,
    function_tool,
    score_of,
)
from branchpoint.sampler.expert import Expert, Turn
from branchpoint.sampler.fork import Sandbox

__all__ = ["DIFFICULTIES", "FsEnv", "FsExpert", "FsTask", "make_task"]

Path_ = tuple[str, ...]

DIFFICULTIES = ("intro", "easy", "medium", "hard")
FOLDERS = ("docs", "logs", "data", "notes", "mail", "work", "src", "tmp")
SUBFOLDERS = ("old", "new", "misc", "done")
WORDS = ("plan", "todo", "memo", "list", "draft", "report", "note", "spec", "info", "idea",
         "task", "draw")
TAGS = ("red", "blue", "green", "gray", "pink", "gold", "teal", "plum")
OWNERS = ("ana", "bo", "cy", "dee", "eli", "fay", "gus", "ivy")
_LEVEL = {  # folders, sub-folders per folder (max), files per folder (min, max), to move
    "intro": (2, 0, (2, 3), 1),
    "easy": (2, 0, (2, 3), 1),
    "medium": (3, 1, (2, 3), 2),
    "hard": (4, 2, (2, 4), 3),
}
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Paths stay far below the operating system's PATH_MAX (4096) even inside a sandbox, so the
# disk backend never fails where the memory backend would succeed.
MAX_DEPTH = 32

SYSTEM = (
    "You tidy a small file system. Paths: /a/b from the root, a/b from the current "
    "folder. Call the tools, or write one command per message: ls [PATH], cd PATH, "
    "cat PATH, find TEXT, mkdir PATH, mv SRC DST, write PATH TEXT (\\n is a new line), "
    "submit."
)


def show(path: Path_) -> str:
    return "/" + "/".join(path)


# --- the task ----------------------------------------------------------------------------


class FsTask:
    """A generated task: the starting files, the request and the expected end state."""

    def __init__(self, *, files: dict[Path_, str], dirs: set[Path_], tag: str,
                 to_move: list[Path_], target: Path_, kind: str, code: str,
                 new_name: str, old_line: str, new_line: str) -> None:
        self.files, self.dirs = files, dirs
        self.tag, self.to_move, self.target, self.kind = tag, to_move, target, kind
        self.code, self.new_name, self.old_line, self.new_line = (
            code, new_name, old_line, new_line)
        folder = (tag,)
        self.folder = folder
        self.names = sorted(p[-1] for p in to_move)
        expected = dict(files)
        for p in to_move:
            expected[(*folder, p[-1])] = expected.pop(p)
        if kind == "rename":
            expected[(*target[:-1], new_name)] = expected.pop(target)
        elif kind == "edit":
            expected[target] = expected[target].replace(old_line, new_line)
        expected[(*folder, "index.txt")] = "\n".join(self.names)
        self.expected = expected

    def prompt(self) -> str:
        move = (f'1. Move every file that contains "tag {self.tag}" into a new folder '
                f"/{self.tag}.\n")
        index = (f"Write /{self.tag}/index.txt: the names of the moved files, sorted, one per "
                 "line.\nThen submit.")
        if self.kind == "none":
            return f"{move}2. {index}"
        step2 = (f'Rename the file that contains "code {self.code}" to "{self.new_name}", in '
                 "the same folder."
                 if self.kind == "rename" else
                 f'In the file that contains "code {self.code}", change "{self.old_line}" '
                 f'to "{self.new_line}".')
        return f"{move}2. {step2}\n3. {index}"


def make_task(task_id: int, difficulty: str = "medium") -> FsTask:
    """The task of ``task_id`` at ``difficulty``, the same on every machine.

    Raises:
        ValueError: an unknown difficulty.
    """
    if difficulty not in _LEVEL:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, "
                         f"got {difficulty!r}")
    n_folders, max_sub, (lo, hi), k = _LEVEL[difficulty]
    rng = random.Random(f"fs/{difficulty}/{task_id}")
    dirs: set[Path_] = set()
    slots: list[Path_] = []
    for top in rng.sample(FOLDERS, n_folders):
        dirs.add((top,))
        slots.append((top,))
        for sub in rng.sample(SUBFOLDERS, rng.randint(0, max_sub)):
            dirs.add((top, sub))
            slots.append((top, sub))
    paths: list[Path_] = []
    for folder in slots:
        paths += [(*folder, f"{w}.txt") for w in rng.sample(WORDS, rng.randint(lo, hi))]
    tag = rng.choice(TAGS)
    # The files to move need distinct names, as they end up side by side in /tag.
    by_name: dict[str, list[Path_]] = {}
    for p in paths:
        by_name.setdefault(p[-1], []).append(p)
    names = rng.sample(sorted(by_name), k)
    to_move = sorted(rng.choice(by_name[n]) for n in names)
    rest = [p for p in paths if p not in to_move]
    target = rng.choice(rest)
    codes = rng.sample(range(100, 1000), len(paths))
    others = [t for t in TAGS if t != tag]
    files: dict[Path_, str] = {}
    for p, number in zip(paths, codes, strict=True):
        lines = [f"tag {tag if p in to_move else rng.choice(others)}", f"code {number}",
                 f"owner {rng.choice(OWNERS)}"]
        if rng.random() < 0.5:
            lines.append(f"size {rng.randint(1, 99)}")
        files[p] = "\n".join(lines)
    kind = rng.choice(("rename", "edit"))
    if difficulty == "intro":  # drawn all the same, so the rest of the task stays as it was
        kind = "none"
    code = files[target].split("\n")[1].split()[1]
    taken = {p[-1] for p in paths if p[:-1] == target[:-1]}
    new_name = rng.choice([f"{w}.txt" for w in WORDS if f"{w}.txt" not in taken])
    old_line = files[target].split("\n")[2]
    new_owner = rng.choice([o for o in OWNERS if f"owner {o}" != old_line])
    return FsTask(files=files, dirs=dirs, tag=tag, to_move=to_move, target=target, kind=kind,
                  code=code, new_name=new_name, old_line=old_line,
                  new_line=f"owner {new_owner}")


# --- backends ----------------------------------------------------------------------------


class FsError(Exception):
    """A failed file operation; its text is shown to the agent after ``error:``."""


class Tree(ABC):
    """The file operations the tools need, on paths already resolved and validated
    (tuples of names below the root). Both backends raise :class:`FsError` with the same
    texts for the same states."""

    @abstractmethod
    def kind(self, p: Path_) -> str | None:
        """``dir``, ``file`` or None when nothing is there."""

    @abstractmethod
    def listdir(self, p: Path_) -> list[tuple[str, bool]]:
        """``(name, is_dir)`` of a folder's entries, sorted by name."""

    @abstractmethod
    def read(self, p: Path_) -> str: ...

    @abstractmethod
    def write(self, p: Path_, text: str) -> None: ...

    @abstractmethod
    def mkdir(self, p: Path_) -> None: ...

    @abstractmethod
    def move(self, src: Path_, dst: Path_) -> None: ...

    @abstractmethod
    def all_files(self) -> dict[Path_, str]:
        """Every file and its text."""

    @abstractmethod
    def load(self, files: dict[Path_, str], dirs: set[Path_]) -> None:
        """Replace everything with these folders and files."""


class MemoryTree(Tree):
    def __init__(self) -> None:
        self.files: dict[Path_, str] = {}
        self.dirs: set[Path_] = {()}

    def kind(self, p: Path_) -> str | None:
        if p in self.dirs:
            return "dir"
        return "file" if p in self.files else None

    def listdir(self, p: Path_) -> list[tuple[str, bool]]:
        n = len(p)
        out = [(d[-1], True) for d in self.dirs if len(d) == n + 1 and d[:n] == p]
        out += [(f[-1], False) for f in self.files if len(f) == n + 1 and f[:n] == p]
        return sorted(out)

    def read(self, p: Path_) -> str:
        return self.files[p]

    def write(self, p: Path_, text: str) -> None:
        self.files[p] = text

    def mkdir(self, p: Path_) -> None:
        self.dirs.add(p)

    def move(self, src: Path_, dst: Path_) -> None:
        n = len(src)
        if src in self.files:
            self.files[dst] = self.files.pop(src)
            return
        self.dirs = {(*dst, *d[n:]) if d[:n] == src else d for d in self.dirs}
        self.files = {((*dst, *f[n:]) if f[:n] == src else f): t
                      for f, t in self.files.items()}

    def all_files(self) -> dict[Path_, str]:
        return dict(self.files)

    def load(self, files: dict[Path_, str], dirs: set[Path_]) -> None:
        self.files, self.dirs = dict(files), {(), *dirs}


class DiskTree(Tree):
    """Files in a real directory. Every access walks the path one name at a time from the
    sandbox root with ``lstat`` and refuses a symbolic link, and files are opened with
    ``O_NOFOLLOW``, so nothing outside the root can be read, listed or written."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    @property
    def root(self) -> str:
        return str(self.sandbox.path)

    def _real(self, p: Path_) -> str:
        cur = self.root
        for i, name in enumerate(p):
            cur = os.path.join(cur, name)
            try:
                mode = os.lstat(cur).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISLNK(mode):
                raise FsError(f"{show(p[:i + 1])} is a link; links are not followed")
        return cur

    def kind(self, p: Path_) -> str | None:
        try:
            mode = os.lstat(self._real(p)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        raise FsError(f"{show(p)} is not a file or folder")

    def listdir(self, p: Path_) -> list[tuple[str, bool]]:
        out = []
        with os.scandir(self._real(p)) as it:
            for e in it:
                if e.is_symlink():
                    continue  # not part of the task's world; never followed
                if e.is_dir(follow_symlinks=False):
                    out.append((e.name, True))
                elif e.is_file(follow_symlinks=False):
                    out.append((e.name, False))
        return sorted(out)

    def read(self, p: Path_) -> str:
        fd = os.open(self._real(p), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8", newline="") as f:
            return f.read()

    def write(self, p: Path_, text: str) -> None:
        fd = os.open(self._real(p), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                     0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    def mkdir(self, p: Path_) -> None:
        os.mkdir(self._real(p))

    def move(self, src: Path_, dst: Path_) -> None:
        os.rename(self._real(src), self._real(dst))

    def all_files(self) -> dict[Path_, str]:
        out: dict[Path_, str] = {}
        stack: list[Path_] = [()]
        while stack:
            d = stack.pop()
            for name, is_dir in self.listdir(d):
                if is_dir:
                    stack.append((*d, name))
                else:
                    out[(*d, name)] = self.read((*d, name))
        return out

    def load(self, files: dict[Path_, str], dirs: set[Path_]) -> None:
        self.sandbox.clear()
        for d in sorted(dirs, key=len):
            self.mkdir(d)
        for f, text in files.items():
            self.write(f, text)


# --- the environment ---------------------------------------------------------------------


def _tools() -> list[dict[str, Any]]:
    path = {"type": "string", "description": "a path: /a/b from the root, a/b from here"}
    return [
        function_tool("ls", "List a folder (the current one by default); folders end in /.",
                      {"path": path}, required=[]),
        function_tool("cd", "Change the current folder.", {"path": path}),
        function_tool("cat", "Show a file.", {"path": path}),
        function_tool("find", "Paths of every file that contains the text.",
                      {"text": {"type": "string"}}),
        function_tool("mkdir", "Create a folder.", {"path": path}),
        function_tool("mv", "Move SRC into the folder DST, or rename it to DST.",
                      {"src": path, "dst": path}),
        function_tool("write", "Create or replace a file with TEXT (\\n is a new line).",
                      {"path": path, "text": {"type": "string"}}),
        function_tool("submit", "Finish the task."),
    ]


TOOLS = _tools()


class FsEnv(ToolEnvironment):
    """The ``fs`` environment. Options: ``difficulty`` (intro | easy | medium | hard, default
    medium), ``backend`` (memory | disk, default memory), ``max_steps`` (default 30)."""

    name: ClassVar[str] = "fs"
    description: ClassVar[str] = (
        "tidy a generated file system: find files by content, move, rename, edit, index")
    max_steps = 30
    tools = TOOLS

    def __init__(self, task_id: int, **options: Any) -> None:
        super().__init__(task_id, **options)
        unknown = set(options) - {"difficulty", "backend", "max_steps"}
        if unknown:
            raise ValueError(f"unknown fs options: {', '.join(sorted(unknown))}")
        self.difficulty: str = options.get("difficulty", "medium")
        self.backend: str = options.get("backend", "memory")
        if self.backend not in ("memory", "disk"):
            raise ValueError(f"backend must be memory or disk, got {self.backend!r}")
        self.fork_mode = "sandbox" if self.backend == "disk" else "snapshot"
        self.spec = make_task(task_id, self.difficulty)
        self.cwd: Path_ = ()
        self.sandbox: Sandbox | None = None
        self.tree: Tree = MemoryTree()
        if self.backend == "disk":
            self.sandbox = Sandbox(prefix="bp-fs-")
            self.tree = DiskTree(self.sandbox)

    # --- lifecycle ---

    def _start(self) -> list[Message]:
        self.tree.load(self.spec.files, self.spec.dirs)
        self.cwd = ()
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": self.spec.prompt()}]

    def _save(self) -> Any:
        if isinstance(self.tree, DiskTree):
            return (self.cwd, Sandbox.copy_of(self.tree.sandbox))
        assert isinstance(self.tree, MemoryTree)
        return (self.cwd, dict(self.tree.files), set(self.tree.dirs))

    def _load(self, state: Any) -> None:
        self.cwd = state[0]
        if isinstance(self.tree, DiskTree):
            box = state[1]
            if not isinstance(box, Sandbox):
                raise TypeError("a memory snapshot cannot be restored into a disk fs")
            self.tree.sandbox.replace_with(box)
        else:
            if isinstance(state[1], Sandbox):
                raise TypeError("a disk snapshot cannot be restored into a memory fs")
            self.tree.load(state[1], state[2])

    def fork(self) -> Environment:
        child = self.fresh()
        child.steps, child.done, child.history = self.steps, self.done, list(self.history)
        child.cwd = self.cwd
        if isinstance(self.tree, DiskTree):
            assert child.sandbox is not None
            child.sandbox.close()
            child.sandbox = Sandbox.copy_of(self.tree.sandbox)
            child.tree = DiskTree(child.sandbox)
        else:
            assert isinstance(self.tree, MemoryTree)
            child.tree.load(self.tree.files, self.tree.dirs)
        return child

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def expert(self, mistakes: float = 0.0, seed: int | str | None = None,
               text: bool = False) -> FsExpert:
        return FsExpert(mistakes=mistakes, seed=self.task_id if seed is None else seed,
                        text=text)

    # --- tools ---

    def resolve(self, raw: str) -> Path_:
        """A path string as names below the root; ``..`` stops at the root.

        Raises:
            FsError: a name with characters other than letters, digits, ``.``, ``_``, ``-``
                (or longer than 64), or a path deeper than :data:`MAX_DEPTH` names.
        """
        parts: list[str] = [] if raw.startswith("/") else list(self.cwd)
        for name in raw.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                if parts:
                    parts.pop()
                continue
            if not _NAME.match(name):
                raise FsError(f"bad name {name!r}: use letters, digits, '.', '_' and '-'")
            parts.append(name)
            if len(parts) > MAX_DEPTH:
                raise FsError(f"path too deep: at most {MAX_DEPTH} folders")
        return tuple(parts)

    def _call(self, name: str, arguments: dict[str, Any]) -> Outcome:
        try:
            return getattr(self, f"_do_{name}")(**arguments)  # type: ignore[no-any-return]
        except FsError as exc:
            return Outcome(f"error: {exc}")
        except OSError as exc:  # the disk said no in a way the checks did not foresee
            return Outcome(f"error: {exc.strerror or 'operation failed'}")

    def _need(self, p: Path_, kind: str) -> None:
        found = self.tree.kind(p)
        if found is None:
            raise FsError(f"no such {'folder' if kind == 'dir' else 'file'}: {show(p)}")
        if found != kind:
            raise FsError(f"{show(p)} is a {'folder' if found == 'dir' else 'file'}")

    def _do_ls(self, path: str = "") -> Outcome:
        p = self.resolve(path)
        self._need(p, "dir")
        entries = [f"{n}/" if d else n for n, d in self.tree.listdir(p)]
        return Outcome("\n".join(entries) if entries else "(empty)")

    def _do_cd(self, path: str) -> Outcome:
        p = self.resolve(path)
        self._need(p, "dir")
        self.cwd = p
        return Outcome(show(p))

    def _do_cat(self, path: str) -> Outcome:
        p = self.resolve(path)
        self._need(p, "file")
        return Outcome(self.tree.read(p))

    def _do_find(self, text: str) -> Outcome:
        if not text:
            raise FsError("find needs some text to look for")
        hits = sorted(show(p) for p, t in self.tree.all_files().items() if text in t)
        return Outcome("\n".join(hits) if hits else "no match")

    def _parent_dir(self, p: Path_) -> None:
        if not p:
            raise FsError("the root cannot be changed")
        if self.tree.kind(p[:-1]) != "dir":
            raise FsError(f"no such folder: {show(p[:-1])}")

    def _do_mkdir(self, path: str) -> Outcome:
        p = self.resolve(path)
        self._parent_dir(p)
        if self.tree.kind(p) is not None:
            raise FsError(f"{show(p)} exists")
        self.tree.mkdir(p)
        return Outcome(f"created {show(p)}")

    def _do_mv(self, src: str, dst: str) -> Outcome:
        s, d = self.resolve(src), self.resolve(dst)
        if not s:
            raise FsError("the root cannot be moved")
        if self.tree.kind(s) is None:
            raise FsError(f"no such file or folder: {show(s)}")
        if self.tree.kind(d) == "dir":
            d = (*d, s[-1])
        self._parent_dir(d)
        if d[:len(s)] == s:
            raise FsError(f"cannot move {show(s)} into itself")
        if self.tree.kind(d) is not None:
            raise FsError(f"{show(d)} exists")
        self.tree.move(s, d)
        if self.cwd[:len(s)] == s:
            self.cwd = (*d, *self.cwd[len(s):])
        return Outcome(f"moved {show(s)} to {show(d)}")

    def _do_write(self, path: str, text: str) -> Outcome:
        p = self.resolve(path)
        self._parent_dir(p)
        if self.tree.kind(p) == "dir":
            raise FsError(f"{show(p)} is a folder")
        text = text.replace("\\n", "\n")
        self.tree.write(p, text)
        return Outcome(f"wrote {show(p)}")

    def _do_submit(self) -> Outcome:
        return Outcome("submitted", done=True)

    # --- the check ---

    def state(self) -> dict[str, str]:
        """Every file and its text (paths from the root): what the check reads."""
        return {show(p): t for p, t in sorted(self.tree.all_files().items())}

    def check(self) -> Check:
        spec, files = self.spec, self.tree.all_files()
        goals: list[SubGoal] = []
        involved = {*spec.to_move, *([spec.target] if spec.kind != "none" else [])}
        dest: Path_
        for p in spec.to_move:
            dest = (*spec.folder, p[-1])
            goals.append(SubGoal(f"moved {p[-1]}", 1.0,
                                 files.get(dest) == spec.files[p] and p not in files))
        if spec.kind == "rename":
            dest = (*spec.target[:-1], spec.new_name)
            involved.add(dest)
            goals.append(SubGoal("renamed", 1.0, files.get(dest) == spec.files[spec.target]
                                 and spec.target not in files))
        elif spec.kind == "edit":
            edited = files.get(spec.target)
            goals.append(SubGoal("edited", 1.0, edited is not None
                                 and edited.rstrip() == spec.expected[spec.target].rstrip()))
        index = files.get((*spec.folder, "index.txt"))
        lines = [ln.strip() for ln in (index or "").splitlines() if ln.strip()]
        goals.append(SubGoal("index", 1.0, index is not None and lines == spec.names))
        allowed = set(spec.expected) | involved
        intact = (all(files.get(p) == t for p, t in spec.files.items() if p not in involved)
                  and set(files) <= allowed)
        goals.append(SubGoal("intact", 1.0, intact))
        return score_of(goals)


# --- the expert ----------------------------------------------------------------------------

_TASK = re.compile(
    r'contains "tag (?P<tag>\w+)" into a new folder /(?P<folder>\w+)\.\n2\. '
    r'(?:Write /|Rename the file that contains "code (?P<rcode>\d+)" to "(?P<new>[\w.-]+)",'
    r'|In the file that contains "code (?P<ecode>\d+)", change "(?P<old>[^"]+)" to '
    r'"(?P<newline>[^"]+)")')


class FsExpert(Expert):
    """Solves ``fs`` tasks from the conversation: ``mkdir``, ``find`` the tagged files and
    ``mv`` each, ``find`` the coded file (and ``cat`` it to edit), rename or ``write`` the
    edit, ``write`` the index, ``submit``. Every path it uses is copied from the task text
    or an observation.

    Mistakes (each valid and plausible): a ``find`` for another tag or ``ls`` of a folder
    it already knows (a wasted step), moving a file to the root instead of the new folder,
    renaming to another name, an edit that keeps only the changed line, an index that is
    unsorted or misses a name, and submitting early.
    """

    def __init__(self, *, mistakes: float = 0.0, seed: int | str = 0,
                 text: bool = False) -> None:
        super().__init__(TOOLS, mistakes=mistakes, seed=seed, text=text)

    def choose(self, opening: list[Message], turns: list[Turn], rng: random.Random,
               wrong: bool) -> tuple[str, dict[str, Any]]:
        task = "\n".join(str(m.get("content")) for m in opening if m.get("role") == "user")
        m = _TASK.search(task)
        if m is None:  # not an fs task we can read; nothing sensible to do
            return "submit", {}
        right, bad = self._plan(m, turns, rng)
        if wrong and bad is not None:
            return bad
        return right

    def _plan(self, m: re.Match[str], turns: list[Turn], rng: random.Random,  # noqa: PLR0915
              ) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]] | None]:
        """The right next call and a wrong one (None when none fits) given the turns."""
        tag, folder = m["tag"], "/" + m["folder"]
        code = m["rcode"] or m["ecode"]
        cwd = "/"
        found: dict[str, list[str]] = {}   # find text -> paths seen
        cats: dict[str, str] = {}          # path -> text seen
        done: set[tuple[str, str]] = set()  # (tool, path) that succeeded
        for t in turns:
            c = t.call
            if c.name == "cd" and t.ok and t.output:
                cwd = t.output
            if not t.ok or t.output is None:
                continue
            if c.name == "find":
                found[c.arguments["text"]] = t.output.splitlines() \
                    if t.output != "no match" else []
            elif c.name == "cat":
                cats[_abs(cwd, c.arguments["path"])] = t.output
            elif c.name == "mv":
                done.add(("mv", _abs(cwd, c.arguments["src"])))
            elif c.name in ("mkdir", "write"):
                done.add((c.name, _abs(cwd, c.arguments["path"])))

        def fresh(call: tuple[str, dict[str, Any]]) -> bool:
            return not self.failed_before(turns, *call)

        waste: tuple[str, dict[str, Any]] = (
            ("find", {"text": f"tag {rng.choice([t for t in TAGS if t != tag])}"})
            if rng.random() < 0.5 else ("ls", {"path": "/"}))
        early: tuple[str, dict[str, Any]] = ("submit", {})
        tag_q, code_q = f"tag {tag}", f"code {code}"
        # Each step reads what the step just before it showed: the new folder first, then
        # find the tagged files and move them, then find the coded file and change it.
        steps: list[tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]] | None]] = []
        if ("mkdir", folder) not in done:
            steps.append((("mkdir", {"path": folder}), waste))
        if tag_q not in found:
            steps.append((("find", {"text": tag_q}), waste))
        tagged = [p for p in found.get(tag_q, []) if not p.startswith(folder + "/")]
        for p in tagged:
            if ("mv", p) not in done:
                name = p.rsplit("/", 1)[1]
                steps.append((("mv", {"src": p, "dst": folder}),
                              ("mv", {"src": p, "dst": "/" + name})))
        if code and code_q not in found:
            steps.append((("find", {"text": code_q}), waste))
        coded = found.get(code_q, [])
        target = coded[0] if coded else None
        if m["ecode"] and target and target not in cats:
            steps.append((("cat", {"path": target}), waste))
        if target and m["rcode"] and ("mv", target) not in done:
            parent = target.rsplit("/", 1)[0]
            other = rng.choice([f"{w}.txt" for w in WORDS if f"{w}.txt" != m["new"]])
            steps.append((("mv", {"src": target, "dst": f"{parent}/{m['new']}"}),
                          ("mv", {"src": target, "dst": f"{parent}/{other}"})))
        if target and m["ecode"] and target in cats and ("write", target) not in done:
            steps.append((("write", {"path": target,
                                     "text": cats[target].replace(m["old"], m["newline"])}),
                          ("write", {"path": target, "text": m["newline"]})))
        index = f"{folder}/index.txt"
        if ("write", index) not in done:
            names = sorted({p.rsplit("/", 1)[1] for p in found.get(tag_q, [])})
            wrong_names = names[:-1] if len(names) > 1 and rng.random() < 0.5 else \
                list(reversed(names)) if len(names) > 1 else [*names, "index.txt"]
            # Every line ends with a new line, as a text file's do (so the text is quoted in
            # the text syntax, and a name reads the same there as after `"` in the request).
            steps.append((("write", {"path": index, "text": "".join(f"{n}\n" for n in names)}),
                          ("write", {"path": index,
                                     "text": "".join(f"{n}\n" for n in wrong_names)})))
        for right, bad in steps:
            if fresh(right):
                # Now and then the wrong move is to stop early, leaving partial credit.
                early_stop = bad is not None and rng.random() < 0.15 and bool(turns)
                return right, (early if early_stop else bad)
        return ("submit", {}), None


def _abs(cwd: str, path: str) -> str:
    """A path as the expert reads it: from the root, ``.`` and ``..`` applied."""
    parts = [] if path.startswith("/") else [p for p in cwd.split("/") if p]
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
        else:
            parts.append(name)
    return "/" + "/".join(parts)

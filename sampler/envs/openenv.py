"""An OpenEnv environment served at a URL, as a branchpoint environment.

OpenEnv (the ``openenv-core`` distribution; checked against 0.3) serves an environment with
``reset``, ``step`` and ``state``. Its HTTP endpoints keep no state between calls; its
WebSocket endpoint (``/ws``) gives each connection a session: an environment instance of
its own on the server, alive until the connection closes. The protocol, one JSON message
each way: ``{"type": "reset", "data": {"seed": N}}``, ``{"type": "step", "data": ACTION}``
and ``{"type": "close"}``; the server answers ``{"type": "observation", "data":
{"observation": {...}, "reward": R, "done": D}}`` or ``{"type": "error", "data":
{"message", "code"}}``. OpenEnv has no fork of its own; this adapter is the tree search on
top of it.

Options (``--option KEY=VALUE``):

``url``
    The server, ``http://HOST:PORT`` (or ``https://``, ``ws://``, ``wss://``); required.
    The root's ``task`` records it (``task.url``) and the seed (``task.seed``), so replay
    and ``branch`` make the same environment again.
``reward_range``
    ``LOW:HIGH``: the raw reward is mapped linearly into [0, 1] (and clipped); by default
    it is clipped to [0, 1], as for the ``trl`` environment. The raw value is kept in the
    score's detail (``reward``).
``reward_sum``
    ``true`` to score the sum of the episode's step rewards (for incremental rewards);
    by default the latest reward given is the score.
``prompt``
    A text that opens every task, before the reset observation (for servers whose reset
    observation does not say what to do).
``max_steps``
    The step budget (default 30).
``timeout``
    Seconds to wait for the server's answer to one message (default 60).

The episode: a task id is the reset's seed (``reset(seed=task_id)``). The reset
observation opens the conversation as a user message. Tools: where the server's
environment takes MCP-style tool actions (it answers a ``list_tools`` action with its
tool list, as OpenEnv's ``MCPEnvironment`` does), each of its tools is a tool and a call
is sent as a ``call_tool`` action; otherwise there is one tool, ``step``, whose
parameters are the server's action schema (``GET /schema``; the base class's
``metadata`` field left out) and whose arguments are the action. An observation is shown
as its one text field when it has one, else as JSON; a tool's result as its text. An
action the server refuses (a validation error) or fails on is an observation that says
so, as for every environment. The observation's ``done`` ends the episode and its
``reward`` becomes the check.

Forking: by replay. Every environment instance is its own session; a fork is a new
session reset to the same seed in which the actions so far run again, each observation
compared with the recorded one (:mod:`branchpoint.sampler.replay` reports a divergence
as for any environment). The tool list and action schema are read once per server and
process; a fork costs one WebSocket connection, a reset and its steps. The server must
allow as many sessions at once as the sampler holds branches open
(``create_app(..., max_concurrent_envs=N)`` with ``SUPPORTS_CONCURRENT_SESSIONS = True``);
a refused session is an :class:`~branchpoint.store.errors.EnvironmentUnavailable` naming
the limit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import weakref
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

from branchpoint.sampler.envs.base import (
    Check,
    Environment,
    Message,
    Reset,
    StepResult,
    _step_limit,
    parse_action,
    reply,
    user_message,
)
from branchpoint.sampler.envs.trl import reward_range, scaled_reward
from branchpoint.store.builder import task_options
from branchpoint.store.errors import EnvironmentUnavailable, MissingDependency
from branchpoint.store.splits import Split

__all__ = ["OpenEnvEnv", "interface_of", "render_observation"]

STEP_TOOL = "step"
_SESSION_ERRORS = frozenset({"CAPACITY_REACHED", "FACTORY_ERROR", "SESSION_ERROR"})
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _urls(url: Any) -> tuple[str, str]:
    """The server's HTTP base URL and its WebSocket session URL.

    Raises:
        ValueError: not an http(s):// or ws(s):// URL with a host.
    """
    parts = urlsplit(str(url or "").strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError("the openenv environment needs --option url=http://HOST:PORT "
                         f"(the OpenEnv server), got {url!r}")
    secure = parts.scheme in ("https", "wss")
    path = parts.path.rstrip("/")
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, path + "/ws", "", ""))
    return http, ws


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _modules() -> tuple[Any, Any]:
    """websockets' synchronous client and httpx.

    Raises:
        MissingDependency: either is not installed.
    """
    try:
        import httpx
        from websockets.sync import client
    except ImportError:
        raise MissingDependency("the openenv environment speaks OpenEnv's protocol with "
                                "websockets and httpx: pip install 'branchpoint[openenv]'"
                                ) from None
    return client, httpx


class _Session:
    """One WebSocket session on an OpenEnv server: an environment instance of its own
    there, alive until :meth:`close`."""

    def __init__(self, url: str, ws_url: str, timeout: float) -> None:
        client, _ = _modules()
        self.url = url
        self.timeout = timeout
        self._stack = contextlib.ExitStack()
        try:
            # entered as a context manager: the plain call is deprecated in websockets 17
            self.ws = self._stack.enter_context(client.connect(
                ws_url, open_timeout=min(timeout, 30.0), max_size=None,
                **({"proxy": None} if _loopback(ws_url) else {})))
        except Exception as exc:  # OSError, InvalidHandshake, InvalidURI, TimeoutError
            raise EnvironmentUnavailable(f"cannot open a session on the OpenEnv server at "
                                         f"{url} ({type(exc).__name__}: {exc}); is it "
                                         "running?") from None
        self._closer = weakref.finalize(self, self._stack.close)

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message, return the server's answer (an observation or an error).

        Raises:
            EnvironmentUnavailable: the connection failed, the answer did not come within
                the timeout, or the server refused the session.
        """
        try:
            try:
                self.ws.send(json.dumps(message))
            except Exception:
                # a server that refuses a session says why and closes at once: read that
                raw = self.ws.recv(timeout=1.0)
            else:
                raw = self.ws.recv(timeout=self.timeout)
            answer = json.loads(raw)
        except TimeoutError:
            raise EnvironmentUnavailable(f"the OpenEnv server at {self.url} did not answer a "
                                         f"{message.get('type')} within {self.timeout:g} s"
                                         ) from None
        except Exception as exc:  # ConnectionClosed, OSError, a reply that is not JSON
            raise EnvironmentUnavailable(f"the OpenEnv session at {self.url} failed during a "
                                         f"{message.get('type')} ({type(exc).__name__}: "
                                         f"{exc})") from None
        if not isinstance(answer, dict):
            raise EnvironmentUnavailable(f"the OpenEnv server at {self.url} answered "
                                         f"{raw!r:.200}, not a message")
        data = _data(answer)
        if answer.get("type") == "error" and data.get("code") in _SESSION_ERRORS:
            detail = ""
            if data.get("code") == "CAPACITY_REACHED":
                detail = (f" (it holds {data.get('max_sessions')} sessions at most: start it "
                          "with a larger max_concurrent_envs, or sample with less "
                          "--branching/--concurrency)")
            raise EnvironmentUnavailable(f"the OpenEnv server at {self.url} refused the "
                                         f"session: {data.get('message')}{detail}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.send(json.dumps({"type": "close"}))
        with contextlib.suppress(Exception):
            self._closer()


def _data(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` of a server's message ({} when it has none)."""
    data = answer.get("data")
    return data if isinstance(data, dict) else {}


def _error_text(data: Mapping[str, Any]) -> str:
    """What the agent reads when the server refused or failed on an action."""
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for e in errors:
            if not isinstance(e, dict):
                continue
            where = ".".join(str(p) for p in e.get("loc") or [])
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return "error: invalid action: " + "; ".join(parts)
    return f"error: {data.get('message') or 'the environment failed on this action'}"


def render_observation(observation: Any) -> str:
    """An observation (the server's dict, without reward, done and metadata) as text: its
    one text field when it has no other non-empty field, else compact JSON in the
    server's key order. A tool's answer (``tool_name``, ``result``, ``error``) is the
    result's text (or data), or the error."""
    if not isinstance(observation, dict):
        return observation if isinstance(observation, str) else json.dumps(observation)
    if "tool_name" in observation and "result" in observation:
        return _tool_result(observation)
    shown = {k: v for k, v in observation.items() if v not in (None, "", [], {})}
    if len(shown) == 1:
        (value,) = shown.values()
        if isinstance(value, str):
            return value
    return json.dumps(shown, ensure_ascii=False, separators=(", ", ": "))


def _tool_result(observation: Mapping[str, Any]) -> str:
    error = observation.get("error")
    if isinstance(error, dict):
        return f"error: {error.get('message') or error.get('error_type')}"
    result = observation.get("result")
    if not isinstance(result, dict):
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    texts = [c.get("text") for c in result.get("content") or []
             if isinstance(c, dict) and isinstance(c.get("text"), str)]
    data = result.get("data")
    if data is not None:
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    else:
        text = "\n".join(t for t in texts if t is not None)
    return f"error: {text}" if result.get("is_error") else text


def _function(name: str, description: str, parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": parameters if isinstance(parameters, dict) and parameters
        else dict(_EMPTY_PARAMETERS)}}


def _action_tool(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The one tool of an environment without a tool list: its action schema without the
    ``metadata`` field every OpenEnv action inherits."""
    params = {k: v for k, v in schema.items() if k not in ("title", "description")}
    props = dict(params.get("properties") or {})
    props.pop("metadata", None)
    params["properties"] = props
    params["type"] = "object"
    if "required" in params:
        params["required"] = [r for r in params["required"] if r != "metadata"]
    title = schema.get("title") or "the action"
    text = str(schema.get("description") or f"Take one step in the environment: {title}.")
    return _function(STEP_TOOL, text, params)


@cache
def interface_of(url: str, timeout: float = 60.0) -> tuple[bool, tuple[dict[str, Any], ...]]:
    """Whether the server at ``url`` takes MCP-style tool actions, and its tools as OpenAI
    tool schemas: its tool list (asked in a session of its own, with a ``list_tools``
    action), else the one ``step`` tool of its action schema. Read once per process.

    Raises:
        EnvironmentUnavailable: the server cannot be reached or refused the session.
    """
    http, ws = _urls(url)
    session = _Session(http, ws, timeout)
    try:
        answer = session.ask({"type": "step", "data": {"type": "list_tools"}})
    finally:
        session.close()
    observation = _data(answer).get("observation") if answer.get("type") == "observation" \
        else None
    listed = observation.get("tools") if isinstance(observation, dict) else None
    if isinstance(listed, list) and listed:
        tools = []
        for t in listed:
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                tools.append(_function(t["name"], str(t.get("description") or ""),
                                       t.get("input_schema", t.get("inputSchema"))))
        if tools:
            return True, tuple(tools)
    _, httpx = _modules()
    try:
        response = httpx.get(f"{http}/schema", timeout=timeout,
                             trust_env=not _loopback(http))
        response.raise_for_status()
        schema = response.json().get("action")
    except Exception as exc:  # httpx.HTTPError, a body that is not JSON
        raise EnvironmentUnavailable(f"cannot read the action schema of the OpenEnv server "
                                     f"at {http} (GET /schema: {exc})") from None
    if not isinstance(schema, dict):
        raise EnvironmentUnavailable(f"the OpenEnv server at {http} gave no action schema")
    return False, (_action_tool(schema),)


class OpenEnvEnv(Environment):
    """An environment served by an OpenEnv server at ``--option url=...``; the task id is
    the reset's seed."""

    name: ClassVar[str] = "openenv"
    description: ClassVar[str] = ("an OpenEnv environment served at a URL: "
                                  "--option url=http://HOST:PORT")

    def __init__(self, task_id: int, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.url, self.ws_url = _urls(options.get("url"))
        self.range = reward_range(options.get("reward_range"))
        summed = options.get("reward_sum", False)
        if not isinstance(summed, bool):
            raise ValueError(f"reward_sum must be true or false, got {summed!r}")
        self.reward_sum = summed
        prompt = options.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt must be a text, got {prompt!r}")
        self.prompt = prompt
        timeout = options.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.max_steps = _step_limit(options, 30)
        self.session: _Session | None = None
        self.mcp = False
        self.tools: list[dict[str, Any]] = []
        self.rewards: list[float] = []
        self.steps = 0
        self.done = False

    # --- what the root records, and making the environment again from it ------------------

    def task_fields(self) -> dict[str, Any]:
        return {"url": self.options["url"], "seed": self.task_id}

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> Self:
        options = task_options(task)
        if "url" not in options and task.get("url"):
            options["url"] = task["url"]
        return cls(task["task_id"], **options)

    @classmethod
    def select_tasks(cls, split: Split, *, count: int | None = None, start: int = 0,
                     end: int | None = None, **options: Any) -> list[int]:
        _urls(options.get("url"))  # refuse a missing URL before anything starts
        return super().select_tasks(split, count=count, start=start, end=end, **options)

    # --- the episode ------------------------------------------------------------------------

    def reset(self) -> Reset:
        mcp, tools = interface_of(self.options["url"], self.timeout)
        self.mcp, self.tools = mcp, [json.loads(json.dumps(t)) for t in tools]
        if self.session is None:
            self.session = _Session(self.url, self.ws_url, self.timeout)
        answer = self.session.ask({"type": "reset", "data": {"seed": self.task_id}})
        data = _data(answer)
        if answer.get("type") != "observation":
            raise EnvironmentUnavailable(f"the OpenEnv server at {self.url} failed to reset "
                                         f"to seed {self.task_id}: {data.get('message')}")
        self.rewards = []
        self.steps = 0
        self.done = bool(data.get("done"))
        shown = render_observation(data.get("observation") or {})
        parts = [self.prompt] if self.prompt else []
        if shown != "{}" or not parts:
            parts.append(shown)
        return Reset(messages=[user_message("\n\n".join(parts))],
                     tools=[dict(t) for t in self.tools])

    def _send(self, arguments: dict[str, Any], name: str) -> str:
        """Run one action on the server; returns what the agent reads."""
        if self.session is None:
            raise RuntimeError("step before reset")
        action = ({"type": "call_tool", "tool_name": name, "arguments": arguments}
                  if self.mcp else dict(arguments))
        answer = self.session.ask({"type": "step", "data": action})
        data = _data(answer)
        if answer.get("type") != "observation":
            return _error_text(data)
        reward = data.get("reward")
        if isinstance(reward, int | float):  # bool too: OpenEnv allows a True reward
            self.rewards.append(float(reward))
        self.done = self.done or bool(data.get("done"))
        return render_observation(data.get("observation"))

    def step(self, action: Message) -> StepResult:
        if self.done or self.session is None:
            return StepResult([user_message("error: the episode is over")], True)
        self.steps += 1
        observation: list[Message] = []
        for call in parse_action(action, self.tools):
            if self.done:
                observation.append(reply(call, "error: the episode is over"))
            elif call.error is not None:
                observation.append(reply(call, f"error: {call.error}"))
            else:
                observation.append(reply(call, self._send(call.arguments, call.name)))
        if not self.done and self.steps >= self.max_steps:
            self.done = True
            observation.append(user_message(
                f"step limit reached ({self.max_steps} steps): the episode is over"))
        return StepResult(observation, self.done)

    def check(self) -> Check:
        """The latest reward the server gave (or, with ``reward_sum``, their sum), mapped
        into [0, 1]; 0 before any reward. Success is the top of the range."""
        if not self.rewards:
            raw = 0.0
        else:
            raw = sum(self.rewards) if self.reward_sum else self.rewards[-1]
        score = scaled_reward(raw, self.range)
        return Check(score=score, success=score >= 1.0, subgoals=[],
                     detail={"reward": raw})

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

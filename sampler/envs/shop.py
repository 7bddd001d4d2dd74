"""``shop``: a mock customer-support API in the manner of tau-bench, over a real SQLite database.

A task is one customer's request (the opening user message) against a small shop: customers,
orders, products with stock, and a written policy (the system message). The agent looks
things up (``find_customer``, ``list_orders``, ``get_order``, ``get_product``), changes orders
(``cancel_order``, ``refund_order``, ``exchange_item``, ``update_address``), talks to the
customer with ``respond`` and ends with ``done``. The back-office API carries out any change
that keeps the data consistent; following the policy is the agent's job, so a request the
policy forbids must be refused with ``respond`` and nothing changed. Text syntax:
``get_order 1042``, ``update_address 1042 12 Oak St, Springfield``, ``respond Your order ...``.

Options: ``difficulty`` (``easy``: the customer gives an email and order ids; ``medium``, the
default: orders are named by what was in them, so the agent must list orders first; ``hard``:
two requests, one of which may be about someone else's order), ``backend`` (``memory``, the
default: a private in-memory database, forked by snapshot; ``disk``: a real database file in
a sandbox directory of its own, forked by copying the file with the backup API) and
``max_steps`` (20). Both backends behave the same; snapshots of either are the serialized
database, restored through the backup API so that a file stays a real file.

The check (:meth:`ShopEnv.check`) compares the final database with the expected one, which
is the gold tool calls applied to a copy of the start state (:meth:`ShopEnv.expected_hash`
is its canonical hash). Sub-goals, with weights:

- ``identify the customer`` (1): ``find_customer`` returned the customer;
- ``look up order N`` (0.5 each): ``get_order`` returned each order the requests are about;
- one per gold call (2 each), e.g. ``cancel order 1042``: the rows that call changes hold the
  expected values;
- ``tell the customer: FACTS`` (2 per request): every fact (a status, an amount, a new item,
  a reason such as ``30 days`` or ``out of stock``) is stated, in any form a person would
  write it (:func:`.shop_reply.states_fact`: ``thirty days``, ``$36.50``), in a ``respond``
  message sent after the customer and the order concerned were looked up; and no reply
  claims what the database did not show when it was sent (:func:`.shop_reply.
  contradictions`: an order called refunded or cancelled that was not). So replies stuffed
  with the expected words, without the lookups, score no more than saying nothing, and a
  correct refusal in other words meets the sub-goal;
- ``database matches the expected one`` (2): same canonical hash;
- ``end with done`` (0.5).

The score is the weight met, less 1 for each row changed that no gold call changes (a
cancelled order that should have been refused, a stock level touched by a wrong exchange),
over the total weight, clipped to [0, 1]. Success needs every sub-goal and no such change.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from branchpoint.sampler.envs.base import (
    Check,
    Message,
    Outcome,
    SubGoal,
    ToolEnvironment,
    function_tool,
)
from branchpoint.sampler.envs.shop_data import (
    CATALOG,
    REFUND_WINDOW_DAYS,
    Difficulty,
    ShopTask,
    dollars,
    make_task,
    normalize_difficulty,
)
from branchpoint.sampler.envs.shop_reply import contradictions, states_fact
from branchpoint.sampler.fork import SqliteSandbox

if TYPE_CHECKING:
    from branchpoint.sampler.expert import Expert

__all__ = ["POLICY", "TOOLS", "ShopEnv", "canonical_hash"]

POLICY = f"""You are the support agent of an online shop. Follow this policy.
1. First find the customer with find_customer (email or full name). Act only on that \
customer's orders: refuse anything about an order that is not on their account.
2. Cancel only pending orders. A shipped or delivered order cannot be cancelled. \
Cancelling refunds the order total.
3. Refund only delivered orders, and only within {REFUND_WINDOW_DAYS} days of delivery. \
The refund is the order total.
4. Exchange an item of a delivered order only for another variant of the same product \
(same kind, same price) that is in stock.
5. Change the shipping address only of pending orders.
6. If the policy forbids a request, refuse it with respond, say why, and change nothing.
7. Tell the customer the outcome with respond: the status, the refund amount, the new \
item or address. Call done when the conversation is over."""

_INT = {"type": "integer"}
_STR = {"type": "string"}
TOOLS: list[dict[str, Any]] = [
    function_tool("find_customer", "Find a customer by email or full name.", {"query": _STR}),
    function_tool("list_orders", "List a customer's orders.", {"customer_id": _INT}),
    function_tool("get_order", "Show an order.", {"order_id": _INT}),
    function_tool("get_product", "Show a product, its stock and its variants.",
                  {"product_id": _INT}),
    function_tool("cancel_order", "Cancel an order and refund its total.", {"order_id": _INT}),
    function_tool("refund_order", "Refund an order's total.", {"order_id": _INT}),
    function_tool("exchange_item", "Exchange an item of an order for another variant.",
                  {"order_id": _INT, "product_id": _INT, "new_product_id": _INT}),
    function_tool("update_address", "Change an order's shipping address.",
                  {"order_id": _INT, "address": {"type": "string", "minLength": 1}}),
    function_tool("respond", "Say something to the customer.", {"text": _STR}),
    function_tool("done", "End the conversation."),
]

_SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
                        address TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
                       price INTEGER NOT NULL, stock INTEGER NOT NULL CHECK (stock >= 0));
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers,
                     status TEXT NOT NULL, days_ago INTEGER NOT NULL, address TEXT NOT NULL,
                     total INTEGER NOT NULL, refund INTEGER NOT NULL DEFAULT 0);
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders, line INTEGER NOT NULL,
                          product_id INTEGER NOT NULL REFERENCES products,
                          price INTEGER NOT NULL, PRIMARY KEY (order_id, line));
"""
# Table -> primary-key columns; the canonical form lists rows in key order.
_KEYS: dict[str, tuple[str, ...]] = {
    "customers": ("id",), "products": ("id",), "orders": ("id",),
    "order_items": ("order_id", "line"),
}
RowKey = tuple[str, tuple[Any, ...]]


def _build(conn: sqlite3.Connection, task: ShopTask) -> None:
    conn.executescript(_SCHEMA)
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                     [(c.id, c.name, c.email, c.address) for c in task.customers])
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)",
                     [(p.id, p.kind, p.name, p.price, task.stock[p.id]) for p in CATALOG])
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, 0)",
                     [(o.id, o.customer_id, o.status, o.days_ago, o.address, o.total)
                      for o in task.orders])
    conn.executemany(
        "INSERT INTO order_items VALUES (?, ?, ?, ?)",
        [(o.id, i + 1, pid, CATALOG[pid - 100].price)
         for o in task.orders for i, pid in enumerate(o.items)])


def _rows(conn: sqlite3.Connection) -> dict[RowKey, tuple[Any, ...]]:
    """Every row of every table, by (table, primary key)."""
    out: dict[RowKey, tuple[Any, ...]] = {}
    for table, keys in _KEYS.items():
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}")
        cols = [d[0] for d in cur.description]
        idx = [cols.index(k) for k in keys]
        for row in cur:
            out[(table, tuple(row[i] for i in idx))] = tuple(row)
    return out


def canonical_hash(conn: sqlite3.Connection) -> str:
    """SHA-256 of every table's rows in primary-key order: equal exactly when the data is."""
    rows = sorted(_rows(conn).items())
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def _status_line(status: str, days: int, refund: int) -> str:
    if status in ("shipped", "delivered"):
        return f"{status} {days} days ago"
    if status == "refunded":
        return f"refunded {dollars(refund)}"
    return status


class _Api:
    """The back-office API over one connection: each method is one valid tool call.

    Shared by the environment and by the gold run that builds the expected database, so the
    two can only differ by the calls made.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _one(self, sql: str, *args: Any) -> Any:
        return self.conn.execute(sql, args).fetchone()

    def find_customer(self, query: str) -> tuple[str, int | None]:
        q = " ".join(query.split()).lower()
        row = self._one("SELECT id, name, email, address FROM customers "
                        "WHERE lower(email) = ? OR lower(name) = ?", q, q)
        if row is None:
            return f"error: no customer matches {query.strip()!r}", None
        return f"customer {row[0]}: {row[1]}, {row[2]}, {row[3]}", row[0]

    def _items(self, order_id: int) -> list[tuple[int, str, int]]:
        return list(self.conn.execute(
            "SELECT p.id, p.name, i.price FROM order_items i JOIN products p "
            "ON p.id = i.product_id WHERE i.order_id = ? ORDER BY i.line", (order_id,)))

    def list_orders(self, customer_id: int) -> str:
        if self._one("SELECT 1 FROM customers WHERE id = ?", customer_id) is None:
            return f"error: no customer {customer_id}"
        lines = []
        for oid, status, total in self.conn.execute(
                "SELECT id, status, total FROM orders WHERE customer_id = ? ORDER BY id",
                (customer_id,)).fetchall():
            names = ", ".join(n for _, n, _ in self._items(oid))
            lines.append(f"order {oid}: {status}, {dollars(total)}, {names}")
        return "\n".join(lines) or f"customer {customer_id} has no orders"

    def get_order(self, order_id: int) -> tuple[str, bool]:
        row = self._one("SELECT customer_id, status, days_ago, address, total, refund "
                        "FROM orders WHERE id = ?", order_id)
        if row is None:
            return f"error: no order {order_id}", False
        cid, status, days, address, total, refund = row
        items = "; ".join(f"{pid} {name} {dollars(price)}"
                          for pid, name, price in self._items(order_id))
        return (f"order {order_id}\ncustomer: {cid}\nstatus: "
                f"{_status_line(status, days, refund)}\nitems: {items}\n"
                f"total: {dollars(total)}\naddress: {address}"), True

    def get_product(self, product_id: int) -> str:
        row = self._one("SELECT kind, name, price, stock FROM products WHERE id = ?",
                        product_id)
        if row is None:
            return f"error: no product {product_id}"
        kind, name, price, stock = row
        others = ", ".join(f"{pid} {n} stock {s}" for pid, n, s in self.conn.execute(
            "SELECT id, name, stock FROM products WHERE kind = ? AND id != ? ORDER BY id",
            (kind, product_id)))
        return (f"product {product_id}: {name}, {dollars(price)}, stock {stock}\n"
                f"variants: {others}")

    def _order(self, order_id: int) -> tuple[str, int] | None:
        row = self._one("SELECT status, total FROM orders WHERE id = ?", order_id)
        return None if row is None else (row[0], row[1])

    def cancel_order(self, order_id: int) -> str:
        return self._close_order(order_id, "cancelled", "cancelled, refund")

    def refund_order(self, order_id: int) -> str:
        return self._close_order(order_id, "refunded", "refunded")

    def _close_order(self, order_id: int, status: str, said: str) -> str:
        """Cancel or refund: the order's total goes back and the order is closed."""
        order = self._order(order_id)
        if order is None:
            return f"error: no order {order_id}"
        if order[0] in ("cancelled", "refunded"):
            return f"error: order {order_id} is already {order[0]}"
        self.conn.execute("UPDATE orders SET status = ?, days_ago = 0, refund = ? WHERE id = ?",
                          (status, order[1], order_id))
        return f"order {order_id} {said} {dollars(order[1])}"

    def exchange_item(self, order_id: int, product_id: int, new_product_id: int) -> str:
        order = self._order(order_id)
        if order is None:
            return f"error: no order {order_id}"
        if order[0] in ("cancelled", "refunded"):
            return f"error: order {order_id} is {order[0]}"
        line = self._one("SELECT line FROM order_items WHERE order_id = ? AND product_id = ?",
                         order_id, product_id)
        if line is None:
            return f"error: product {product_id} is not in order {order_id}"
        old = self._one("SELECT kind, price, name FROM products WHERE id = ?", product_id)
        new = self._one("SELECT kind, price, name, stock FROM products WHERE id = ?",
                        new_product_id)
        if new is None:
            return f"error: no product {new_product_id}"
        if new_product_id == product_id or (new[0], new[1]) != (old[0], old[1]):
            return f"error: product {new_product_id} is not another variant of {product_id}"
        if new[3] < 1:
            return f"error: product {new_product_id} is out of stock"
        self.conn.execute("UPDATE order_items SET product_id = ? WHERE order_id = ? AND line = ?",
                          (new_product_id, order_id, line[0]))
        self.conn.execute("UPDATE products SET stock = stock - 1 WHERE id = ?",
                          (new_product_id,))
        return f"order {order_id}: {old[2]} exchanged for {new[2]}"

    def update_address(self, order_id: int, address: str) -> str:
        order = self._order(order_id)
        address = " ".join(address.split())
        if order is None:
            return f"error: no order {order_id}"
        if not address:
            return "error: the address is empty"
        if order[0] in ("cancelled", "refunded"):
            return f"error: order {order_id} is {order[0]}"
        self.conn.execute("UPDATE orders SET address = ? WHERE id = ?", (address, order_id))
        return f"order {order_id} will ship to {address}"

    def change(self, name: str, args: dict[str, Any]) -> str:
        """Run one changing call (the four order changes)."""
        method = getattr(self, name)
        return str(method(**args))


@dataclass
class _Session:
    """What the check needs beyond the database: who and what was looked up, and replies."""

    customers_found: set[int] = field(default_factory=set)
    orders_seen: set[int] = field(default_factory=set)
    replies: list[str] = field(default_factory=list)
    contexts: list[_ReplyContext] = field(default_factory=list)  # one per reply
    ended: bool = False

    def copy(self) -> _Session:
        return replace(self, customers_found=set(self.customers_found),
                       orders_seen=set(self.orders_seen), replies=list(self.replies),
                       contexts=list(self.contexts))


@dataclass(frozen=True)
class _ReplyContext:
    customers_found: frozenset[int]
    orders_seen: frozenset[int]
    orders: dict[int, tuple[str, int]]  # order id -> (status, refund) at the reply


@dataclass(frozen=True)
class _Gold:
    start_rows: dict[RowKey, tuple[Any, ...]]
    gold_rows: dict[RowKey, tuple[Any, ...]]
    gold_hash: str
    # For each gold call: the rows it changed.
    touched: tuple[frozenset[RowKey], ...]
    start_bytes: bytes


@functools.lru_cache(maxsize=256)
def _gold(task_id: int, difficulty: Difficulty) -> _Gold:
    """Build the start database, apply the gold calls to a copy, note what each changed.
    Cached: forks and replays of a task build fresh environments of it again and again."""
    spec = make_task(task_id, difficulty)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _build(conn, spec)
        start_bytes = conn.serialize()
        start_rows = _rows(conn)
        api, before, touched = _Api(conn), start_rows, []
        for request in spec.requests:
            for name, args in request.gold:
                api.change(name, args)
                after = _rows(conn)
                touched.append(frozenset(k for k in after.keys() | before.keys()
                                         if after.get(k) != before.get(k)))
                before = after
        return _Gold(start_rows, before, canonical_hash(conn), tuple(touched), start_bytes)
    finally:
        conn.close()


class ShopEnv(ToolEnvironment):
    """A customer-support task over a real SQLite database (see the module docstring).

    Raises (on construction):
        ValueError: for an unknown option, ``difficulty`` or ``backend``, or a bad
            ``max_steps``.
    """

    name: ClassVar[str] = "shop"
    description: ClassVar[str] = (
        "customer support over a SQLite shop: look up customers and orders, cancel, refund, "
        "exchange or re-address under a written policy, refuse what it forbids")
    max_steps = 20
    tools = TOOLS

    def __init__(self, task_id: int, **options: Any) -> None:
        unknown = set(options) - {"difficulty", "backend", "max_steps"}
        if unknown:
            raise ValueError(f"unknown shop options: {', '.join(sorted(unknown))}")
        super().__init__(task_id, **options)
        self.difficulty = normalize_difficulty(options.get("difficulty", "medium"))
        if "difficulty" in options:
            self.options["difficulty"] = self.difficulty  # 2 and "medium" are one task
        self.backend: str = options.get("backend", "memory")
        if self.backend not in ("memory", "disk"):
            raise ValueError(f"backend must be memory or disk, got {self.backend!r}")
        self.fork_mode = "sandbox" if self.backend == "disk" else "snapshot"
        self.spec = make_task(task_id, self.difficulty)
        self.sandbox: SqliteSandbox | None = None
        self._conn: sqlite3.Connection | None = None
        self._gold: _Gold | None = None
        self._session = _Session()

    # --- storage --------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The live database, opened on first use: in memory, or for ``disk`` a file in a
        sandbox of this environment's own. Autocommit, so each change is on disk at once."""
        if self._conn is None:
            if self.backend == "disk":
                self.sandbox = SqliteSandbox(prefix="bp-shop-")
                self._conn = sqlite3.connect(self.sandbox.db_path, isolation_level=None)
                # A branch's sandbox need not survive a power cut: skip the fsyncs.
                self._conn.execute("PRAGMA synchronous = OFF")
            else:
                self._conn = sqlite3.connect(":memory:", isolation_level=None)
            self._write(self.gold().start_bytes)  # so that it is never an empty database
        return self._conn

    @property
    def db_path(self) -> Path | None:
        """The database file of a ``disk`` environment (None in memory)."""
        _ = self.conn
        return None if self.sandbox is None else self.sandbox.db_path

    def _write(self, data: bytes) -> None:
        # Through the backup API, so that a file database stays a real file on disk.
        src = sqlite3.connect(":memory:")
        try:
            src.deserialize(data)
            src.backup(self.conn)
        finally:
            src.close()

    def gold(self) -> _Gold:
        """The start state and the expected end state of this task."""
        if self._gold is None:
            self._gold = _gold(self.task_id, self.difficulty)
        return self._gold

    def expected_hash(self) -> str:
        """Canonical hash of the expected final database."""
        return self.gold().gold_hash

    def db_hash(self) -> str:
        """Canonical hash of the live database."""
        return canonical_hash(self.conn)

    # --- ToolEnvironment ------------------------------------------------------------------

    def _start(self) -> list[Message]:
        self._write(self.gold().start_bytes)
        self._session = _Session()
        return [{"role": "system", "content": POLICY},
                {"role": "user", "content": self.spec.message}]

    def _call(self, name: str, arguments: dict[str, Any]) -> Outcome:
        try:
            return self._run(name, arguments)
        except OverflowError:  # an id past SQLite's 64-bit integers names no row
            return Outcome(f"error: {name}: a number is too large")

    def _run(self, name: str, arguments: dict[str, Any]) -> Outcome:
        api = _Api(self.conn)
        if name == "find_customer":
            text, cid = api.find_customer(arguments["query"])
            if cid is not None:
                self._session.customers_found.add(cid)
            return Outcome(text)
        if name == "get_order":
            text, found = api.get_order(arguments["order_id"])
            if found:
                self._session.orders_seen.add(arguments["order_id"])
            return Outcome(text)
        if name == "list_orders":
            return Outcome(api.list_orders(arguments["customer_id"]))
        if name == "get_product":
            return Outcome(api.get_product(arguments["product_id"]))
        if name == "respond":
            s = self._session
            s.replies.append(arguments["text"])
            # What the agent had looked up and what the database showed when it replied.
            orders = {oid: (status, refund) for oid, status, refund in self.conn.execute(
                "SELECT id, status, refund FROM orders")}
            s.contexts.append(_ReplyContext(frozenset(s.customers_found),
                                            frozenset(s.orders_seen), orders))
            return Outcome("sent")
        if name == "done":
            self._session.ended = True
            return Outcome("conversation ended", done=True)
        return Outcome(api.change(name, arguments))

    def _save(self) -> Any:
        return (self.conn.serialize(), self._session.copy())

    def _load(self, state: Any) -> None:
        data, session = state
        self._write(data)
        self._session = session.copy()

    def fork(self) -> ShopEnv:
        """An independent copy in the current state: for ``disk``, a new sandbox holding a
        copy of the database file (sibling branches share nothing)."""
        child = self.fresh()
        child._gold = self._gold
        if self.sandbox is not None:
            child.reset()
            self.conn.backup(child.conn)  # a page-level copy into the child's own file
            child.steps, child.done, child.history = self.steps, self.done, list(self.history)
            child._session = self._session.copy()
            return child
        child.reset()
        child.restore(self.snapshot())
        return child

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    # --- scoring --------------------------------------------------------------------------

    def check(self) -> Check:
        gold = self.gold()
        final = _rows(self.conn)
        spec, session = self.spec, self._session
        goals: list[SubGoal] = [
            SubGoal("identify the customer", 1.0, spec.customer_id in session.customers_found)]
        for oid in dict.fromkeys(r.order_id for r in spec.requests):
            goals.append(SubGoal(f"look up order {oid}", 0.5, oid in session.orders_seen))
        touched_iter = iter(gold.touched)
        expected: set[RowKey] = set()
        for request in spec.requests:
            for name, args in request.gold:
                rows = next(touched_iter)
                expected |= rows
                met = all(final.get(k) == gold.gold_rows.get(k) for k in rows)
                goals.append(SubGoal(_describe(name, args), 2.0, met))
        concerned = [r.order_id for r in spec.requests]
        truthful = not any(contradictions(text, ctx.orders, concerned)
                           for text, ctx in zip(session.replies, session.contexts, strict=True))
        for i, request in enumerate(spec.requests):
            facts = ", ".join(request.facts)
            label = f"tell the customer: {facts}" + (f" (request {i + 1})"
                                                     if len(spec.requests) > 1 else "")
            informed = "\n".join(
                text for text, ctx in zip(session.replies, session.contexts, strict=True)
                if spec.customer_id in ctx.customers_found and request.order_id in ctx.orders_seen)
            told = all(states_fact(informed, f) for f in request.facts)
            goals.append(SubGoal(label, 2.0, truthful and told))
        goals.append(SubGoal("database matches the expected one", 2.0,
                             canonical_hash(self.conn) == gold.gold_hash))
        goals.append(SubGoal("end with done", 0.5, session.ended))
        unexpected = [k for k in final.keys() | gold.start_rows.keys()
                      if k not in expected and final.get(k) != gold.start_rows.get(k)]
        total = sum(g.weight for g in goals)
        earned = sum(g.weight for g in goals if g.met) - 1.0 * len(unexpected)
        score = min(1.0, max(0.0, earned / total))
        success = all(g.met for g in goals) and not unexpected
        return Check(score=round(score, 6), success=success, subgoals=goals)

    def expert(self, mistakes: float = 0.0, seed: int | str | None = None,
               text: bool = False) -> Expert:
        """The scripted support agent (:mod:`.shop_expert`); ``text=True`` makes it write
        the text syntax instead of tool calls.

        Raises:
            ValueError: ``mistakes`` is not in [0, 1].
        """
        from branchpoint.sampler.envs.shop_expert import ShopExpert

        return ShopExpert(self.tools, mistakes=mistakes,
                          seed=self.task_id if seed is None else seed, text=text)


def _describe(name: str, args: dict[str, Any]) -> str:
    oid = args["order_id"]
    if name == "cancel_order":
        return f"cancel order {oid}"
    if name == "refund_order":
        return f"refund order {oid}"
    if name == "exchange_item":
        old = CATALOG[args["product_id"] - 100].name
        new = CATALOG[args["new_product_id"] - 100].name
        return f"exchange {old} for {new} in order {oid}"
    return f"update the address of order {oid}"

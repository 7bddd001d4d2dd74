"""Tasks of the ``shop`` environment: the catalog, the generated world and the request.

Everything here is a pure function of ``(task_id, difficulty)``: a task is a small world
(customers, their orders, stock levels) plus one or two customer requests, each either
allowed by the policy (with the gold tool calls that carry it out) or to be refused (no
gold calls). The request is written from a handful of fixed templates so that the vocabulary
stays small and regular; the scripted expert reads the same templates back from the opening
user message (:mod:`.shop_expert`), never from this module's hidden ``ShopTask``.

Money is held in cents and shown as ``$12.50``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CATALOG",
    "DIFFICULTIES",
    "REFUND_WINDOW_DAYS",
    "Difficulty",
    "Request",
    "ShopTask",
    "dollars",
    "make_task",
    "normalize_difficulty",
]

Difficulty = Literal["easy", "medium", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
REFUND_WINDOW_DAYS = 30

# kind -> (price in cents, colours); product ids are assigned in this order from 100.
_KINDS: list[tuple[str, int, list[str]]] = [
    ("mug", 1250, ["blue", "green", "red", "white"]),
    ("shirt", 2400, ["black", "white", "navy", "grey"]),
    ("lamp", 3999, ["brass", "black", "white"]),
    ("kettle", 4500, ["steel", "black", "red"]),
    ("backpack", 5900, ["green", "grey", "black"]),
    ("scarf", 1800, ["red", "blue", "yellow"]),
    ("notebook", 650, ["blue", "black", "orange"]),
    ("headphones", 8900, ["black", "white", "silver"]),
]


@dataclass(frozen=True)
class Product:
    id: int
    kind: str
    color: str
    price: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def _catalog() -> list[Product]:
    out: list[Product] = []
    for kind, price, colors in _KINDS:
        for color in colors:
            out.append(Product(100 + len(out), kind, color, price))
    return out


CATALOG: tuple[Product, ...] = tuple(_catalog())
_BY_KIND: dict[str, list[Product]] = {}
for _p in CATALOG:
    _BY_KIND.setdefault(_p.kind, []).append(_p)

_FIRST = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
          "Kira", "Liam", "Maya", "Noah", "Olga", "Pablo", "Rosa", "Sami", "Tara", "Yusuf"]
_LAST = ["Adams", "Brown", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hall", "Ito",
         "Jones", "Khan", "Lopez", "Moreau", "Novak", "Olsen", "Patel", "Rossi", "Silva"]
_STREETS = ["Oak", "Elm", "Pine", "Maple", "Cedar", "Birch", "Lake", "Hill", "Mill", "River"]
_CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Greenville", "Ashford"]

RequestKind = Literal["status", "cancel", "refund", "exchange", "address"]


def dollars(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


@dataclass
class Customer:
    id: int
    first: str
    last: str
    address: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def email(self) -> str:
        return f"{self.first}.{self.last}@example.com".lower()


@dataclass
class Order:
    id: int
    customer_id: int
    status: str  # pending | shipped | delivered | cancelled | refunded
    days_ago: int  # days since the last status change
    address: str
    items: list[int]  # product ids, one unit each

    @property
    def total(self) -> int:
        return sum(CATALOG[pid - 100].price for pid in self.items)


@dataclass(frozen=True)
class Request:
    """One thing the customer asks. ``gold`` is empty when the policy says refuse."""

    kind: RequestKind
    order_id: int
    by_item: str | None  # the customer names the order by this product, not by its id
    allowed: bool
    gold: tuple[tuple[str, dict[str, Any]], ...]
    facts: tuple[str, ...]  # what the replies must contain (case-insensitive)
    sentence: str


@dataclass
class ShopTask:
    task_id: int
    difficulty: Difficulty
    customers: list[Customer]
    orders: list[Order]
    stock: dict[int, int]
    customer_id: int
    requests: list[Request] = field(default_factory=list)
    message: str = ""


def normalize_difficulty(value: Any) -> Difficulty:
    """``easy``/``medium``/``hard`` or 1/2/3.

    Raises:
        ValueError: for anything else.
    """
    if value in (1, "1", "easy"):
        return "easy"
    if value in (2, "2", "medium"):
        return "medium"
    if value in (3, "3", "hard"):
        return "hard"
    raise ValueError(f"difficulty must be easy, medium or hard (or 1, 2, 3), got {value!r}")


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 99)} {rng.choice(_STREETS)} St, {rng.choice(_CITIES)}"


def _random_status(rng: random.Random) -> tuple[str, int]:
    status = rng.choice(["pending", "shipped", "delivered", "delivered", "cancelled"])
    days = {"pending": 0, "shipped": rng.randint(1, 5)}.get(status, rng.randint(1, 60))
    return status, days


def make_task(task_id: int, difficulty: Difficulty) -> ShopTask:
    """The world and request of one task: a pure function of its arguments."""
    rng = random.Random(f"shop:{task_id}:{difficulty}")
    names = rng.sample([(f, la) for f in _FIRST for la in _LAST], 5)
    cids = rng.sample(range(1, 100), 5)
    customers = [Customer(c, f, la, _address(rng)) for c, (f, la) in zip(cids, names, strict=True)]
    stock = {p.id: rng.choice([0, 1, 2, 3, 5, 8]) for p in CATALOG}
    oids = iter(rng.sample(range(1000, 10000), 20))
    me = customers[0]
    orders: list[Order] = []
    # The customer's own orders never share a product kind, so "my blue mug order" and
    # "the blue mug I bought" always name exactly one order and one item.
    kinds = rng.sample([k for k, _, _ in _KINDS], len(_KINDS))
    n_mine = rng.randint(2, 3) if difficulty != "hard" else 3
    for _ in range(n_mine):
        n_items = rng.randint(1, 2)
        items = [rng.choice(_BY_KIND[kinds.pop()]).id for _ in range(n_items)]
        status, days = _random_status(rng)
        orders.append(Order(next(oids), me.id, status, days, me.address, items))
    for other in customers[1:]:
        for _ in range(rng.randint(1, 2)):
            items = [p.id for p in rng.sample(CATALOG, rng.randint(1, 2))]
            status, days = _random_status(rng)
            orders.append(Order(next(oids), other.id, status, days, other.address, items))
    task = ShopTask(task_id, difficulty, customers, orders, stock, me.id)

    mine = [o for o in orders if o.customer_id == me.id]
    n_requests = 2 if difficulty == "hard" else 1
    targets = rng.sample(mine, n_requests)
    requests: list[Request] = []
    for i, order in enumerate(targets):
        if difficulty == "hard" and i == 1 and rng.random() < 0.3:
            # Someone else's order, named by its id: the policy says refuse.
            foreign = rng.choice([o for o in orders if o.customer_id != me.id])
            requests.append(_foreign_request(rng, foreign))
            continue
        by_item = difficulty != "easy" and rng.random() < 0.8
        requests.append(_request(rng, task, order, by_item=by_item))
    task.requests = requests
    intro = _intro(rng, me, with_email=difficulty == "easy" or rng.random() < 0.5)
    task.message = " ".join([intro, requests[0].sentence, *("Also: " + r.sentence for r in
                                                             requests[1:])])
    return task


def _intro(rng: random.Random, c: Customer, *, with_email: bool) -> str:
    if with_email:
        return rng.choice([f"Hi, I'm {c.name} ({c.email}).",
                           f"Hello, this is {c.name}, email {c.email}."])
    return rng.choice([f"Hi, I'm {c.name}.", f"Hello, this is {c.name}."])


def _ref(order: Order, by_item: str | None) -> str:
    return f"my {by_item} order" if by_item else f"order {order.id}"


def _set_status(order: Order, status: str, days: int) -> None:
    order.status, order.days_ago = status, days


def _request(rng: random.Random, task: ShopTask, order: Order, *, by_item: bool) -> Request:
    kind: RequestKind = rng.choice(["status", "cancel", "refund", "exchange", "address"])
    allowed = rng.random() < 0.55
    item = CATALOG[order.items[0] - 100]
    name = item.name if by_item else None
    ref = _ref(order, name)
    oid = order.id
    if kind == "status":
        _set_status(order, *_random_status(rng))
        sentence = rng.choice([f"What is the status of {ref}?", f"Where is {ref}?"])
        return Request(kind, oid, name, True, (), (order.status,), sentence)
    if kind == "cancel":
        sentence = rng.choice([f"Please cancel {ref}.", f"I want to cancel {ref}."])
        if allowed:
            _set_status(order, "pending", 0)
            return Request(kind, oid, name, True, (("cancel_order", {"order_id": oid}),),
                           ("cancelled", dollars(order.total)[1:]), sentence)
        _set_status(order, *rng.choice([("shipped", rng.randint(1, 5)),
                                        ("delivered", rng.randint(1, 60))]))
        return Request(kind, oid, name, False, (), (order.status,), sentence)
    if kind == "refund":
        sentence = rng.choice([f"I'd like a refund for {ref}.", f"Please refund {ref}."])
        if allowed:
            _set_status(order, "delivered", rng.randint(1, REFUND_WINDOW_DAYS))
            return Request(kind, oid, name, True, (("refund_order", {"order_id": oid}),),
                           (dollars(order.total)[1:],), sentence)
        if rng.random() < 0.6:
            _set_status(order, "delivered", rng.randint(REFUND_WINDOW_DAYS + 1, 90))
            return Request(kind, oid, name, False, (), (f"{REFUND_WINDOW_DAYS} days",), sentence)
        _set_status(order, *rng.choice([("shipped", rng.randint(1, 5)), ("pending", 0)]))
        return Request(kind, oid, name, False, (), (order.status,), sentence)
    if kind == "exchange":
        _set_status(order, "delivered", rng.randint(1, 60))
        new = rng.choice([p for p in _BY_KIND[item.kind] if p.id != item.id])
        where = f"in order {oid}" if name is None else "I bought"
        sentence = f"Please exchange the {item.name} {where} for a {new.name}."
        if allowed:
            task.stock[new.id] = max(task.stock[new.id], 1)
            args = {"order_id": oid, "product_id": item.id, "new_product_id": new.id}
            call: tuple[str, dict[str, Any]] = ("exchange_item", args)
            return Request(kind, oid, name, True, (call,), (new.name,), sentence)
        task.stock[new.id] = 0
        return Request(kind, oid, name, False, (), ("out of stock",), sentence)
    address = _address(rng)
    sentence = rng.choice([f"Please ship {ref} to {address} instead.",
                           f"Change the address of {ref} to {address}."])
    if allowed:
        _set_status(order, "pending", 0)
        call = ("update_address", {"order_id": oid, "address": address})
        return Request("address", oid, name, True, (call,), (address,), sentence)
    _set_status(order, *rng.choice([("shipped", rng.randint(1, 5)),
                                    ("delivered", rng.randint(1, 60))]))
    return Request("address", oid, name, False, (), (order.status,), sentence)


def _foreign_request(rng: random.Random, order: Order) -> Request:
    kind: RequestKind = rng.choice(["cancel", "refund", "address"])
    ref = f"order {order.id}"
    sentence = {
        "cancel": f"Please cancel {ref}.",
        "refund": f"Please refund {ref}.",
        "address": f"Please ship {ref} to {_address(rng)} instead.",
    }[kind]
    return Request(kind, order.id, None, False, (), ("not on your account",), sentence)

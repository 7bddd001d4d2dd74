"""The scripted support agent of the ``shop`` environment.

It reads the customer's request back from the opening user message (the fixed templates of
:mod:`.shop_data`) and everything else from tool outputs in the conversation: it finds the
customer, lists their orders when an order is named by what was in it, looks up each order
(and, for an exchange, the product's variants), then applies the policy in the system
message, makes the change or refuses, tells the customer the facts with ``respond`` and
ends with ``done``. The plan is re-derived from the conversation on every turn.

Mistakes (each valid, plausible and wrong): doing a change the policy forbids; refusing an
allowed request; changing another of the customer's orders; exchanging to the wrong
variant; a truncated address; a reply that leaves out the facts; ending before the end.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from branchpoint.sampler.envs.base import Message, text_of
from branchpoint.sampler.envs.shop_data import REFUND_WINDOW_DAYS
from branchpoint.sampler.expert import Expert, Turn

__all__ = ["ParsedRequest", "ShopExpert", "parse_request"]

_NAME = r"[a-z]+ [a-z]+"
_REF = rf"order \d+|my {_NAME} order"
_PATTERNS: list[tuple[str, str]] = [
    ("status", rf"What is the status of ({_REF})\?"),
    ("status", rf"Where is ({_REF})\?"),
    ("cancel", rf"(?:Please cancel|I want to cancel) ({_REF})\."),
    ("refund", rf"(?:I'd like a refund for|Please refund) ({_REF})\."),
    ("exchange", rf"Please exchange the ({_NAME}) (?:in (order \d+)|I bought) for an? ({_NAME})\."),
    ("address", rf"Please ship ({_REF}) to ([^.]+?) instead\."),
    ("address", rf"Change the address of ({_REF}) to ([^.]+)\."),
]
_VAGUE = "Your request is taken care of. Is there anything else?"


@dataclass(frozen=True)
class ParsedRequest:
    kind: str
    order_id: int | None  # named by id
    item: str | None  # the product the order is named by (or the item to exchange)
    new_item: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Identity:
    email: str | None
    name: str | None


def parse_request(text: str) -> tuple[Identity, list[ParsedRequest]]:
    """The customer and their requests, in the order asked, from the opening message."""
    email = re.search(r"[\w.]+@[\w.]+\w", text)
    name = re.search(r"(?:I'm|this is) ([A-Z][a-z]+ [A-Z][a-z]+)", text)
    found: list[tuple[int, ParsedRequest]] = []
    for kind, pattern in _PATTERNS:
        for m in re.finditer(pattern, text):
            if kind == "exchange":
                oid = int(m.group(2).split()[1]) if m.group(2) else None
                req = ParsedRequest(kind, oid, m.group(1), new_item=m.group(3))
            else:
                oid, item = _ref(m.group(1))
                req = ParsedRequest(kind, oid, item,
                                    address=m.group(2) if kind == "address" else None)
            found.append((m.start(), req))
    found.sort(key=lambda p: p[0])
    return (Identity(email.group(0) if email else None, name.group(1) if name else None),
            [r for _, r in found])


def _ref(ref: str) -> tuple[int | None, str | None]:
    if ref.startswith("order "):
        return int(ref.split()[1]), None
    return None, ref[3:-6]  # "my blue mug order"


@dataclass
class _Order:
    customer: int
    status: str
    days: int
    items: list[tuple[int, str]]
    total: str
    address: str


@dataclass
class _Known:
    """What the observations so far show."""

    customer: int | None = None
    listed: dict[int, list[str]] = field(default_factory=dict)  # order -> product names
    orders: dict[int, _Order] = field(default_factory=dict)
    # product name -> (id, stock), from get_product outputs
    products: dict[str, tuple[int, int]] = field(default_factory=dict)
    looked_up: set[int] = field(default_factory=set)  # get_product ids
    changes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    responses: int = 0


def _read(turns: list[Turn], who: Identity) -> _Known:
    """What the conversation has shown. A ``find_customer`` answer counts only when it is
    the customer of the opening message: a prefix written by someone else (a model) may
    have looked up another customer, and the expert must not act for that one."""
    k = _Known()
    for t in turns:
        name, args = t.call.name, t.call.arguments
        if name in ("cancel_order", "refund_order", "exchange_item", "update_address") \
                and t.call.ok:
            k.changes.append((name, args))
        if name == "respond" and t.call.ok:
            k.responses += 1
        if not t.ok or t.output is None:
            continue
        out = t.output
        if name == "find_customer":
            if (who.email and who.email in out) or (who.name and who.name in out):
                k.customer = int(out.split(":", 1)[0].split()[1])
        elif name == "list_orders":
            for line in out.splitlines():
                m = re.match(r"order (\d+): [a-z]+, \$[\d.]+, (.*)$", line)
                if m:
                    k.listed[int(m.group(1))] = m.group(2).split(", ")
        elif name == "get_order":
            k.orders[args["order_id"]] = _parse_order(out)
        elif name == "get_product":
            k.looked_up.add(args["product_id"])
            first, _, variants = out.partition("\nvariants: ")
            m = re.match(r"product (\d+): (.+?), \$[\d.]+, stock (\d+)", first)
            if m:
                k.products[m.group(2)] = (int(m.group(1)), int(m.group(3)))
            for v in variants.split(", "):
                m = re.match(r"(\d+) (.+) stock (\d+)$", v)
                if m:
                    k.products[m.group(2)] = (int(m.group(1)), int(m.group(3)))
    return k


def _parse_order(out: str) -> _Order:
    fields = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    status_words = fields["status"].split()
    days = int(status_words[1]) if status_words[0] in ("shipped", "delivered") else 0
    items = []
    for item in fields["items"].split("; "):
        pid, rest = item.split(" ", 1)
        items.append((int(pid), rest.rsplit(" ", 1)[0]))
    return _Order(int(fields["customer"]), status_words[0], days, items, fields["total"],
                  fields["address"])


Call = tuple[str, dict[str, Any]]


class ShopExpert(Expert):
    """The ``shop`` expert; build it with :meth:`ShopEnv.expert`."""

    def choose(self, opening: list[Message], turns: list[Turn], rng: random.Random,
               wrong: bool) -> Call:
        user = next((text_of(m.get("content")) for m in opening if m.get("role") == "user"),
                    None) or ""
        who, requests = parse_request(user)
        plan = _Plan(_read(turns, who), turns, rng, wrong, self)
        if plan.k.customer is None:
            query = who.email or who.name or ""
            if self.failed_before(turns, "find_customer", {"query": query}):
                return "respond", {"text": "Sorry, I cannot find your account."}
            return plan.lookup("find_customer", {"query": query})
        for i, req in enumerate(requests):
            if plan.k.responses > i:
                continue
            return plan.serve(req)
        return "done", {}


@dataclass
class _Plan:
    """One turn's decision: what is known, and whether this turn errs."""

    k: _Known
    turns: list[Turn]
    rng: random.Random
    wrong: bool
    expert: ShopExpert

    def lookup(self, name: str, args: dict[str, Any]) -> Call:
        # A lookup has one plausible wrong move: giving up before the work is done.
        if self.wrong and self.k.customer is not None and self.rng.random() < 0.4:
            return "done", {}
        return name, args

    def reply(self, text: str) -> Call:
        return "respond", {"text": _VAGUE if self.wrong else text}

    def serve(self, req: ParsedRequest) -> Call:
        k = self.k
        cid = k.customer
        oid = req.order_id
        if oid is None:
            if not k.listed:
                return self.lookup("list_orders", {"customer_id": cid})
            oid = next((o for o, names in k.listed.items() if req.item in names), None)
            if oid is None:
                return "respond", {"text": f"Sorry, I cannot find an order with a {req.item}."}
        order = k.orders.get(oid)
        if order is None:
            if self.expert.failed_before(self.turns, "get_order", {"order_id": oid}):
                return "respond", {"text": f"Sorry, I cannot find order {oid}."}
            return self.lookup("get_order", {"order_id": oid})
        if order.customer != cid:
            return self.refuse(req, oid, order, f"Sorry, order {oid} is not on your account.")
        if req.kind == "status":
            return self.reply(_status_text(oid, order))
        if req.kind == "exchange":
            return self.exchange(req, oid, order)
        if req.kind == "cancel":
            if order.status == "pending":
                return self.change(("cancel_order", {"order_id": oid}), req,
                                   f"Order {oid} is cancelled. A refund of {order.total} "
                                   "goes back to your card.")
            return self.refuse(req, oid, order, f"Sorry, order {oid} is already "
                               f"{order.status}, so it cannot be cancelled.")
        if req.kind == "refund":
            if order.status == "delivered" and order.days <= REFUND_WINDOW_DAYS:
                return self.change(("refund_order", {"order_id": oid}), req,
                                   f"Order {oid} is refunded: {order.total}.")
            if order.status == "delivered":
                why = (f"Sorry, order {oid} was delivered {order.days} days ago, past our "
                       f"{REFUND_WINDOW_DAYS} days refund window.")
            else:
                why = f"Sorry, order {oid} is {order.status}, so it cannot be refunded yet."
            return self.refuse(req, oid, order, why)
        address = req.address or ""
        if order.status == "pending":
            return self.change(("update_address", {"order_id": oid, "address": address}),
                               req, f"Order {oid} will ship to {address}.")
        return self.refuse(req, oid, order, f"Sorry, order {oid} is already {order.status}, "
                           "so its address cannot change.")

    def exchange(self, req: ParsedRequest, oid: int, order: _Order) -> Call:
        old = next((pid for pid, name in order.items if name == req.item), None)
        if old is None:
            return self.reply(f"Sorry, order {oid} has no {req.item}.")
        if old not in self.k.looked_up and not self.expert.failed_before(
                self.turns, "get_product", {"product_id": old}):
            return self.lookup("get_product", {"product_id": old})
        new = self.k.products.get(req.new_item or "")
        if order.status != "delivered":
            return self.refuse(req, oid, order, f"Sorry, order {oid} is {order.status}, so "
                               "its items cannot be exchanged yet.")
        if new is None:
            return self.reply(f"Sorry, a {req.new_item} is not a variant of the {req.item}.")
        call = ("exchange_item", {"order_id": oid, "product_id": old, "new_product_id": new[0]})
        if new[1] > 0:
            return self.change(call, req, f"Done: the {req.item} in order {oid} is exchanged "
                               f"for a {req.new_item}.")
        return self.refuse(req, oid, order, f"Sorry, the {req.new_item} is out of stock, so "
                           f"I cannot exchange your {req.item}.")

    def change(self, call: Call, req: ParsedRequest, confirm: str) -> Call:
        """An allowed change: make it (once), then confirm it."""
        name, args = call
        oid = args["order_id"]
        if any(n == name and a.get("order_id") == oid for n, a in self.k.changes):
            return self.reply(confirm)
        if not self.wrong:
            return call
        options: list[Call] = [("respond", {"text": "Sorry, I cannot do that under our "
                                                    "policy."})]
        others = [o for o in self.k.listed if o != oid]
        if others and name != "exchange_item":
            options.append((name, {**args, "order_id": self.rng.choice(others)}))
        if name == "exchange_item":
            alt = _other_variant(self.k, req, args["new_product_id"])
            if alt is not None:
                options.append((name, {**args, "new_product_id": alt}))
        if name == "update_address":
            options.append((name, {**args, "address": (req.address or "-").split(",")[0]}))
        return self.rng.choice(options)

    def refuse(self, req: ParsedRequest, oid: int, order: _Order, why: str) -> Call:
        """A forbidden request: say why and change nothing (or, wrongly, do it anyway)."""
        if not self.wrong:
            return "respond", {"text": why}
        done_already = any(a.get("order_id") == oid for _, a in self.k.changes)
        if done_already or self.rng.random() < 0.3:
            return "respond", {"text": _VAGUE}
        if req.kind == "cancel":
            return "cancel_order", {"order_id": oid}
        if req.kind == "refund":
            return "refund_order", {"order_id": oid}
        if req.kind == "address":
            return "update_address", {"order_id": oid, "address": req.address or "-"}
        old = next((pid for pid, name in order.items if name == req.item), None)
        new = self.k.products.get(req.new_item or "")
        alt = _other_variant(self.k, req, new[0] if new else -1)
        if old is None or alt is None:
            return "respond", {"text": _VAGUE}
        return "exchange_item", {"order_id": oid, "product_id": old, "new_product_id": alt}


def _other_variant(k: _Known, req: ParsedRequest, avoid: int) -> int | None:
    """An in-stock variant other than the one asked for (and the one being returned)."""
    item = req.item or ""
    kind = item.split(" ", 1)[-1]
    old = k.products.get(item, (-1, 0))[0]
    options = sorted(pid for name, (pid, stock) in k.products.items()
                     if stock > 0 and pid not in (avoid, old) and name.endswith(" " + kind))
    return options[0] if options else None


def _status_text(oid: int, order: _Order) -> str:
    if order.status == "pending":
        return f"Order {oid} is pending and has not shipped yet."
    if order.status == "shipped":
        return f"Order {oid} shipped {order.days} days ago."
    if order.status == "delivered":
        return f"Order {oid} was delivered {order.days} days ago."
    return f"Order {oid} is {order.status}."

"""Reading the shop agent's replies the way a person would, so that the check rewards what
the task asks and nothing else.

Two questions, both pure functions of text and of what the database showed:

- :func:`states_fact`: does a reply state a fact (an order status, an amount, a window
  such as ``30 days``, a reason such as ``out of stock``, an address or a product name) in
  any form a person writes? ``30 days``, ``30-day`` and ``thirty days``; ``$36.50``,
  ``36.50`` and ``36.5``; ``canceled`` and ``cancelled``; ``isn't on your account`` and
  ``belongs to another customer``. Words must match whole words: ``delivered`` is not in
  ``undelivered``.
- :func:`contradictions`: what a reply claims that the database did not show when it was
  sent. A clause (a stretch between ``.``, ``,``, ``;``, ``!``, ``?`` or ``:``) that says
  ``refunded``, ``cancelled``, ``pending``, ``shipped`` or ``delivered`` without a negation
  (``not``, ``cannot``, ``n't``, ``never``, ``no``, ``unable``) claims it of the orders it
  names by id, or when it names none, of the orders the requests are about. The claim
  holds when one of those orders had that status (``refunded`` also holds for an order
  whose total was refunded by a cancellation). A keyword list is a clause of claims that
  cannot all hold.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Final

__all__ = ["OrderState", "contradictions", "number_words", "states_fact"]

# order id -> (status, refunded cents) when the reply was sent
OrderState = Mapping[int, tuple[str, int]]

_ONES: Final = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen"]
_TENS: Final = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                "ninety"]
_STATUSES: Final = ("refunded", "cancelled", "pending", "shipped", "delivered")
_NEGATION: Final = re.compile(r"\b(not|cannot|never|no|unable|nor)\b|n't\b")
_AMOUNT: Final = re.compile(r"^\d+\.\d{2}$")
_DAYS: Final = re.compile(r"^(\d+) days$")
_NUMBER: Final = re.compile(r"(?<![\w.])\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])")
_CLAUSE: Final = re.compile(r"(?<!\d)[.,;!?:](?!\d)|\n")

# A fact that is a reason has the ways people say it.
_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "not on your account": ("not on your account", "not in your account",
                            "isn't on your account", "is not on your account",
                            "not your order", "isn't your order", "not one of your orders",
                            "belongs to another customer", "belongs to someone else",
                            "another customer's order", "not associated with your account",
                            "not linked to your account", "is not yours", "isn't yours"),
    "out of stock": ("out of stock", "not in stock", "sold out", "no stock",
                     "none in stock", "none left", "unavailable", "not available"),
}


def number_words(n: int) -> list[str]:
    """The ways to write ``n`` (0-99) in words: ``thirty``; ``thirty-one``, ``thirty one``."""
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    if n >= 100:
        return []
    if not ones:
        return [_TENS[tens]]
    return [f"{_TENS[tens]}-{_ONES[ones]}", f"{_TENS[tens]} {_ONES[ones]}"]


def _normal(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"\bcancel(?:l)?ed\b", "cancelled", text)
    return re.sub(r"\s+", " ", text)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9$]+(?:'[a-z]+)?", text)


def _has_words(text: str, phrase: str) -> bool:
    """Whether ``phrase``'s words appear in ``text``, in order and next to each other."""
    hay, needle = _words(text), _words(phrase)
    if not needle:
        return False
    return any(hay[i:i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1))


def _amounts(text: str) -> list[float]:
    out = []
    for whole, frac in _NUMBER.findall(text):
        out.append(float(whole.replace(",", "") + ("." + frac if frac else "")))
    return out


def states_fact(reply: str, fact: str) -> bool:
    """Whether ``reply`` states ``fact`` in a form a person would write."""
    text, fact = _normal(reply), _normal(fact).strip()
    if _AMOUNT.match(fact):
        target = float(fact)
        return any(abs(a - target) < 0.005 for a in _amounts(text))
    if m := _DAYS.match(fact):
        n = int(m.group(1))
        forms = [str(n), *number_words(n)]
        return any(re.search(rf"(?<![\w-]){re.escape(f)}[\s-]days?\b", text) for f in forms)
    if fact in _PHRASES:
        return any(_has_words(text, p) for p in _PHRASES[fact])
    return _has_words(text, fact)


def _holds(status: str, state: tuple[str, int]) -> bool:
    actual, refunded = state
    if status == "refunded":
        return actual == "refunded" or refunded > 0
    return actual == status


def contradictions(reply: str, orders: OrderState, concerned: Collection[int]) -> list[str]:
    """The claims of ``reply`` that ``orders`` (the database when it was sent) contradicts,
    as ``"order N is STATUS"`` (``"order ? is STATUS"`` when no order it may mean was
    found). ``concerned``: the orders the requests are about, for clauses that name none.
    """
    found: list[str] = []
    for clause in _CLAUSE.split(_normal(reply)):
        if _NEGATION.search(clause):
            continue
        claimed = [s for s in _STATUSES if _has_words(clause, s)]
        if not claimed:
            continue
        named = [int(n) for n in re.findall(r"\b\d{4}\b", clause) if int(n) in orders]
        targets = named or [o for o in concerned if o in orders]
        for status in claimed:
            if not any(_holds(status, orders[o]) for o in targets):
                found.append(f"order {targets[0] if targets else '?'} is {status}")
    return found

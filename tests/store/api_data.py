"""Trees for the API, server and browser tests: a few ordinary ones, a hostile one (markup
and script in everything an agent can write) and a big one (thousands of nodes)."""

from __future__ import annotations

import random

from branchpoint.store.events import Event
from tests.store.builders import TOOLS, TreeBuilder, action, call, two_step_tree

HOSTILE_TREE = "evil/<script>window.__pwned=1</script>"
SCRIPT = "<script>window.__pwned = 1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
LINK = '<a href="javascript:window.__pwned=1">click me</a>'
LOOKALIKE = '<div class="badge pair">pair Δ9.99</div><button onclick="window.__pwned=1">ok</button>'


def ordinary(n: int = 3) -> list[Event]:
    """``n`` two-step trees (each with two pairs) in envs fs and shop."""
    events: list[Event] = []
    for i in range(n):
        events += two_step_tree(f"run/{'fs' if i % 2 == 0 else 'shop'}/{i}",
                                env="fs" if i % 2 == 0 else "shop", task_id=i,
                                tools=TOOLS).events
    return events


def hostile() -> list[Event]:
    """A tree whose every agent-written string is markup that would run if rendered."""
    b = TreeBuilder(HOSTILE_TREE, env=f"fs{IMG}", task_id=SCRIPT)
    b.root("r", user=f"{SCRIPT} {IMG} {LINK}", system=LOOKALIKE)
    b.step("x<img src=y onerror=window.__pwned=1>", "r",
           action(f"{SCRIPT}{LINK}", call(f"read{IMG}", {"path": SCRIPT, "html": IMG})),
           observation=f"{LOOKALIKE}{IMG}")
    b.score("x<img src=y onerror=window.__pwned=1>", 1.0)
    b.step("y", "r", action(f"{IMG} javascript:window.__pwned=1"), observation=SCRIPT,
           done=True)
    b.score("y", 0.0)
    return b.events


def big(tree_id: str = "big/5000", nodes: int = 5000, fanout: int = 4,
        seed: int = 0) -> list[Event]:
    """A tree of ``nodes`` nodes, ``fanout`` children per inner node, leaves scored."""
    rng = random.Random(seed)
    b = TreeBuilder(tree_id, env="fs", task_id="big").root("r")
    queue = ["r"]
    made = 1
    kids: dict[str, int] = {}
    while made < nodes:
        parent = queue[0]
        node = f"n{made}"
        b.step(node, parent, action(f"step {made}: try option {rng.randint(0, 9)}"),
               observation=f"result {made}")
        made += 1
        kids[parent] = kids.get(parent, 0) + 1
        queue.append(node)
        if kids[parent] == fanout:
            queue.pop(0)
    for leaf in queue:
        if leaf not in kids:
            b.score(leaf, round(rng.random(), 2))
    return b.events

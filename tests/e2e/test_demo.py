"""The README's main command, `meshtrace demo`, run as a newcomer runs it.

The demo starts meshtrace, a simulated Bookinfo mesh whose sidecars export spans to it and
poll its priorities, and the scenario's load: `interactive` (entry productpage, p99 objective
150 ms, importance 10) from the start and `batch` (entry reviews, importance 1) after
`--batch-after`. The loop is closed when meshtrace has traces of both classes, budgets for
both, a priority assignment at the shared `reviews` that puts interactive above batch, and
the `reviews` sidecars hold that assignment's version.
"""

from __future__ import annotations

import time

DEADLINE_S = 120.0


def _state(api) -> dict:
    budgets = {b["class"]: b for b in api.json("/api/v1/budgets")["classes"]}
    reviews = api.json("/api/v1/priorities", {"service": "reviews"})
    proxies = [p for p in api.json("/api/v1/proxies")["proxies"] if p["service"] == "reviews"]
    return {"budgets": budgets, "reviews": reviews, "proxies": proxies}


def _closed(state: dict) -> bool:
    budgets, reviews = state["budgets"], state["reviews"]
    levels = {a["class"]: a["priority"] for a in reviews.get("assignments", [])}
    return (
        all(budgets.get(c, {}).get("samples", 0) > 0 for c in ("interactive", "batch"))
        and {"interactive", "batch"} <= set(levels)
        and levels["interactive"] < levels["batch"]
        and any(p["version"] == reviews["version"] for p in state["proxies"])
    )


def test_demo_closes_the_loop_from_traces_to_sidecar_priorities(server_factory):
    demo = server_factory("--batch-after", "3s", subcommand="demo")
    deadline = time.monotonic() + DEADLINE_S
    state = _state(demo.api)
    while not _closed(state) and time.monotonic() < deadline:
        time.sleep(1.0)
        state = _state(demo.api)
    assert _closed(state), f"the loop did not close within {DEADLINE_S}s: {state}"

    # Both classes' budgets split their objective over hops that include the shared service.
    for c in ("interactive", "batch"):
        hops = state["budgets"][c]["hops"]
        assert any(h["service"] == "reviews" for h in hops), (c, hops)
        assert all(h["budget_ms"] >= 0 for h in hops), (c, hops)
    # Every trace the sidecars sent is classified by where it entered.
    rows = demo.api.sql_rows(
        "SELECT class, root_service, count(*) FROM traces GROUP BY class, root_service "
        "ORDER BY class, root_service"
    )
    roots = {(r[0], r[1]) for r in rows}
    assert ("interactive", "productpage") in roots, rows
    assert ("batch", "reviews") in roots, rows
    assert {r[0] for r in rows} <= {"interactive", "batch"}, rows

    log = demo.log_text()
    assert "meshtrace demo: scenario" in log, demo.log_tail()
    assert demo.stop() == 0, demo.log_tail()
    assert "stopped: the sidecars exported" in demo.log_text(), demo.log_tail()

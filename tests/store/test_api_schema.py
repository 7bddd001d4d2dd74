"""schemathesis against the OpenAPI document the running server serves (a real port):
generated requests to every operation, checked for server errors and for answers that
break the documented status codes, media types and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from branchpoint.cli.app import ServeConfig, create_app
from branchpoint.store.log import MemoryEventLog
from tests.serving import run_async, serving
from tests.store.api_data import ordinary

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    log = MemoryEventLog()
    run_async(log.append, ordinary(2))
    with serving(create_app(log, ServeConfig())) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(served: str) -> Any:
    return schemathesis.openapi.from_url(f"{served}/schema/openapi.json")


def _check(operation: Any, mode: Any) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    check()


# schemathesis's own pytest plugin does not run under pytest 9 (it reads a private
# attribute pytest dropped), so each operation is driven through hypothesis directly.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_operation_answers_within_its_documented_schema(api_schema: Any,
                                                              mode: str) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/events", "GET /v1/trees", "GET /v1/trees/{tree_id}", "GET /v1/node",
            "GET /v1/stats", "POST /v1/scores", "GET /v1/export/{fmt}",
            "GET /health"} <= labels
    for op in operations:
        try:
            _check(op, GenerationMode(mode))
        except Unsatisfiable:
            assert mode == "negative"  # a schema that nothing breaks: no negative case
        except Exception as exc:
            raise AssertionError(f"{op.label} ({mode}): {exc}") from exc

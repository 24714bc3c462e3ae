"""Property-based API test: schemathesis generates requests from our OpenAPI schema
(run in-process over ASGI, with an admin token) and checks that no input produces a
server error and that every response matches the documented schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server.conftest import Harness

EXAMPLES_PER_OPERATION = 25


@pytest.mark.slow
def test_api_never_errors_and_matches_its_schema(h: Harness) -> None:
    h.register()
    schema = schemathesis.openapi.from_asgi("/openapi.json", h.app)
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call(headers=h.admin)
            case.validate_response(response, checks=[not_a_server_error,
                                                     response_schema_conformance])

        try:
            run()
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:600]}")
    assert failures == [], "\n".join(failures[:10])

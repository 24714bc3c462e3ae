"""Property-based API test: schemathesis generates requests from our OpenAPI schema
(run in-process over ASGI, with an admin token) and checks that no input produces a
server error and that every response matches the documented schema; a stateful run
(bounded in time) chains calls on one server and must never see a 5xx."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Flaky
from schemathesis import GenerationMode
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

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call(headers=h.admin)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

        try:
            run()
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:600]}")
    assert failures == [], "\n".join(failures[:10])


STATEFUL_SCENARIOS = 150
STATEFUL_STEPS = 12
STATEFUL_BUDGET_S = 45.0  # a bound on the run, never an assertion on speed


@pytest.mark.slow
def test_a_stateful_run_never_gets_a_server_error(h: Harness) -> None:
    """Sequences of calls on one server (create, then use, change and delete what was
    created), as an admin whose own token the run never revokes: without that exclusion
    the fuzzer locks itself out after a few steps and tests nothing but 401s."""
    h.register()
    fuzzer = h.client.post(
        "/api/v1/tokens",
        json={"name": "fuzzer", "role": "admin", "namespaces": ["*"]},
        headers=h.admin,
    ).json()
    headers = {"Authorization": f"Bearer {fuzzer['token']}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", h.app)
    schema.config.generation.update(modes=list(GenerationMode))  # invalid inputs too
    deadline = time.monotonic() + STATEFUL_BUDGET_S
    statuses: list[int] = []

    class Fuzz(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            if time.monotonic() > deadline:
                raise _BudgetSpent
            if (
                case.method.upper() == "DELETE"
                and case.path == "/api/v1/tokens/{token_id}"
                and case.path_parameters.get("token_id") == fuzzer["id"]
            ):
                case.path_parameters["token_id"] = fuzzer["id"] + 1_000_000  # never ourselves

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": headers}

        def validate_response(
            self,
            response: Any,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            statuses.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

    try:
        Fuzz.run(
            settings=settings(
                max_examples=STATEFUL_SCENARIOS,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    except (_BudgetSpent, Flaky):
        # Hypothesis replays the run that raised _BudgetSpent; past the deadline the
        # replay stops at its first step, which it reports as Flaky. Either way the
        # budget ended the run, and every status it saw is checked below.
        if time.monotonic() <= deadline:
            raise
    assert len(statuses) >= 50 and all(code < 500 for code in statuses)
    assert sum(200 <= code < 300 for code in statuses) >= 10  # not just refusals
    me = h.client.get("/api/v1/whoami", headers=headers)
    assert me.status_code == 200  # the run never locked itself out


class _BudgetSpent(Exception):
    """The stateful run used its time budget: stop it as a pass."""

"""Schema-driven fuzzing (issue 11): Schemathesis generates requests from the live server's OpenAPI document, valid
and invalid, and checks every answer: never a 5xx, and status code, content type and body always as documented.

The number of examples per operation is bounded (``SCHEMATHESIS_EXAMPLES``, default 25) so the run takes about a
minute on CPU against the tiny random model. Operations are driven with Hypothesis directly (``@given`` over each
operation's strategy) rather than through Schemathesis' pytest plugin, which does not load under this pytest."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")  # the dev extra installs it
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from schemathesis.checks import (  # noqa: E402
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance)

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_answers_as_documented(server):
    operations = _operations(server.url)
    assert len(operations) >= 9
    sent = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            sent[label] += 1
            case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=120)

        run()
    assert all(n > 0 for n in sent.values()), sent

"""The OpenAPI document against the running service: schemathesis generates requests for every
operation from /openapi.json (its examples, boundary values, then random valid and invalid
input), sends them with the API key to a real Gunicorn API on a real Redis with a real worker,
and checks each answer against the document: never a 5xx, only documented statuses, content
types and headers, and bodies that match their schemas. Bounded: a few examples per operation."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import httpx
import hypothesis
import pytest
import schemathesis
from PIL import Image

from harness import Stack

pytestmark = pytest.mark.integration

# The checks of what an answer may be; not schemathesis's judgements of what the API should accept.
CHECKS: list[Callable] = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
MAX_EXAMPLES = 25


def _document() -> dict:
    """The document as the API generates it: the cases are made from it at collection, before the
    stack runs; ``test_the_stack_serves_the_document_the_cases_come_from`` holds it to the served one.
    (schemathesis.pytest.from_fixture, which would load it from the stack, fails on pytest 9.2.)"""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict({
    "phases": {"stateful": {"enabled": False}},
    "generation": {"max-examples": MAX_EXAMPLES},
    "request-timeout": 10,
}))


def test_the_stack_serves_the_document_the_cases_come_from(stack: Stack) -> None:
    assert httpx.get(f"{stack.api_url}/openapi.json").json() == DOCUMENT


@pytest.mark.timeout(120)
@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=10_000, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_as_its_document_says(case: schemathesis.Case, stack: Stack) -> None:
    case.call_and_validate(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"},
                           checks=CHECKS, timeout=10)


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_real_photos_job_and_its_feedback_answer_as_documented(stack: Stack) -> None:
    """What generated requests cannot reach (they never make a real image): a job that is queued,
    then succeeded, and the feedback on it, each validated by the same checks."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    recognize = schema["/v1/recognize"]["POST"]
    case = recognize.Case(body={"image": _photo()}, media_type="multipart/form-data")
    queued = case.call_and_validate(base_url=stack.api_url, headers=headers, checks=CHECKS)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]

    detail = schema["/v1/recognitions/{job_id}"]["GET"]
    deadline = time.monotonic() + 60
    while True:
        case = detail.Case(path_parameters={"job_id": job_id}, query={"wait": 5})
        answer = case.call_and_validate(base_url=stack.api_url, headers=headers, checks=CHECKS)
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
    assert answer.json()["status"] == "succeeded", answer.text

    feedback = schema["/v1/recognitions/{job_id}/feedback"]["POST"]
    for expected in (201, 409):
        case = feedback.Case(path_parameters={"job_id": job_id}, body={"color": "red"}, media_type="application/json")
        answer = case.call_and_validate(base_url=stack.api_url, headers=headers, checks=CHECKS)
        assert answer.status_code == expected, answer.text

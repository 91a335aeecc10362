"""The OpenAPI document (/openapi.json) and the pages that show it (/docs, /redoc), in-process:
a valid document, the bearer key on exactly the authenticated operations, every error code in
its enum with a meaning, an example of every request and response (each valid against its
schema), and pages that load nothing from anywhere but the API itself."""

from __future__ import annotations

import inspect
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

import common.errors
from common.errors import RecognitionError
from recognition_api.errors import _DRF_CODES

PUBLIC = {"/healthz", "/readyz"}
METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    response = Client().get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def resolved(node: Any, document: dict[str, Any]) -> Any:
    """``node`` as JSON Schema: every local ``$ref`` replaced by what it names (the document has no
    cycles), and OpenAPI 3.0's ``nullable`` (which drf-spectacular puts next to an ``allOf``) made
    an ``anyOf`` with null, as schemathesis reads it."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolved(target, document)
        node = {k: resolved(v, document) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [resolved(v, document) for v in node]
    return node


def hierarchy_codes() -> set[str]:
    classes = [c for _, c in inspect.getmembers(common.errors, inspect.isclass) if issubclass(c, RecognitionError)]
    pending, seen = [RecognitionError], set(classes)
    while pending:  # and subclasses defined anywhere else
        for sub in pending.pop().__subclasses__():
            seen.add(sub)
            pending.append(sub)
    return {c.code for c in seen}


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")


def test_operation_ids_are_unique_and_both_recognize_paths_are_the_same_operation(
        document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids)), ids
    plain, versioned = document["paths"]["/recognize"]["post"], document["paths"]["/v1/recognize"]["post"]
    assert (plain["operationId"], versioned["operationId"]) == ("recognize", "recognize_v1")
    assert {k: v for k, v in plain.items() if k != "operationId"} == \
        {k: v for k, v in versioned.items() if k != "operationId"}


def test_the_document_links_to_both_pages_that_show_it(document: dict[str, Any]) -> None:
    description = document["info"]["description"]
    assert "(/docs)" in description and "(/redoc)" in description and "(/openapi.json)" in description


def test_the_api_key_is_a_bearer_scheme_on_every_authenticated_operation_only(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"ApiKey"}
    assert (schemes["ApiKey"]["type"], schemes["ApiKey"]["scheme"]) == ("http", "bearer")
    assert "security" not in document  # per operation, never a global default
    for path, method, op in operations(document):
        if path in PUBLIC:
            assert op.get("security", []) == [], (method, path)
        else:
            assert op["security"] == [{"ApiKey": []}], (method, path)
            assert "401" in op["responses"], (method, path)
    assert set(document["paths"]) >= PUBLIC
    # The documents themselves are not operations of the API.
    assert not {"/openapi.json", "/docs", "/redoc"} & set(document["paths"])


def test_the_error_code_enum_lists_every_code_with_its_status_and_meaning(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["ErrorDetail"]["properties"]["code"]["allOf"] == [{"$ref": "#/components/schemas/ErrorCodeEnum"}]
    enum = schemas["ErrorCodeEnum"]
    expected = hierarchy_codes() | set(_DRF_CODES.values()) | {"not_found", "invalid_request", "internal_error"}
    assert expected <= set(enum["enum"]), expected - set(enum["enum"])
    assert len(enum["enum"]) == len(set(enum["enum"]))
    meanings = dict(re.findall(r"^\* `([a-z_]+)` - (.+)$", enum["description"], re.MULTILINE))
    assert set(meanings) == set(enum["enum"])
    for code, meaning in meanings.items():
        assert re.match(r"^(\d{3}|on a failed job): \S", meaning), (code, meaning)
        assert "Unexpected error." not in meaning or code == "error", f"{code} has no meaning of its own"


def test_every_error_class_says_what_it_means_itself() -> None:
    """Its own docstring or default_message: the enum's description, and never the base class's."""
    for _, cls in inspect.getmembers(common.errors, inspect.isclass):
        if issubclass(cls, RecognitionError):
            assert cls.__dict__.get("__doc__") or cls.__dict__.get("default_message"), cls.__name__


def test_429_and_503_carry_retry_after_and_401_www_authenticate(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            headers = response.get("headers", {})
            if status in ("429", "503") and path not in PUBLIC:
                assert headers["Retry-After"]["required"] is True, (method, path, status)
            if status == "401":
                assert "WWW-Authenticate" in headers, (method, path)


def test_every_operation_has_an_example_of_each_request_and_response(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        bodies = [("request " + media, content) for media, content in
                  op.get("requestBody", {}).get("content", {}).items()]
        bodies += [(f"{status} {media}", content) for status, response in op["responses"].items()
                   for media, content in response.get("content", {}).items()]
        assert bodies, (method, path)
        for where, content in bodies:
            assert content.get("examples"), f"{method.upper()} {path}: no example of the {where} body"


def test_every_example_is_valid_against_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    for path, method, op in operations(document):
        contents = list(op.get("requestBody", {}).get("content", {}).values())
        contents += [c for r in op["responses"].values() for c in r.get("content", {}).values()]
        for content in contents:
            schema = resolved(content["schema"], document)
            for name, example in content.get("examples", {}).items():
                errors = [e.message for e in OAS31Validator(schema).iter_errors(example["value"])]
                assert not errors, f"{method.upper()} {path} example {name}: {errors}"
                checked += 1
    assert checked >= 40


def test_the_status_codes_of_each_endpoint_are_listed(document: dict[str, Any]) -> None:
    answers = {path: set(op["responses"]) for path, _, op in operations(document)}
    assert answers["/v1/recognize"] >= {"200", "202", "400", "401", "411", "413", "415", "422", "429", "503"}
    assert answers["/v1/recognitions/{job_id}"] == {"200", "202", "400", "401", "404", "503"}
    assert answers["/v1/recognitions/{job_id}/feedback"] == {"201", "400", "401", "404", "409", "415", "503"}
    assert answers["/healthz"] == {"200"} and answers["/readyz"] == {"200", "503"}


# --- the pages ------------------------------------------------------------------------------


class _Resources(HTMLParser):
    """Every URL a page loads by itself: scripts, stylesheets, icons, images, the spec."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for attribute in ("src", "href", "spec-url"):
            if found.get(attribute) and (tag != "a" or attribute != "href"):
                self.urls.append(found[attribute] or "")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_each_page_answers_without_a_key_and_loads_only_the_apis_own_files(page: str) -> None:
    client = Client()
    response = client.get(page)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    # The browser itself refuses anything from elsewhere (Redoc's sidebar logo from its CDN).
    policy = response["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy
    assert not re.search(r"https?:|\*", policy), policy
    html = response.content.decode()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), "a URL of another origin"
    parser = _Resources()
    parser.feed(html)
    assert len(parser.urls) >= 2, parser.urls
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        fetched = client.get(url)
        assert fetched.status_code == 200, url
        body = b"".join(fetched.streaming_content) if fetched.streaming else fetched.content
        assert body, url
    assert "/openapi.json" in parser.urls or "/docs?script=" in parser.urls  # Redoc's spec; Swagger's start-up


def test_a_page_answers_even_with_a_wrong_key() -> None:
    """The document is public: a stale key in the browser never hides it."""
    client = Client(HTTP_AUTHORIZATION="Bearer rk_not-a-key")
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_starts_from_a_script_file_with_no_outside_validator() -> None:
    """No inline script (the policy allows none): its settings come from /docs?script=."""
    client = Client()
    assert "<script>" not in client.get("/docs").content.decode()
    script = client.get("/docs?script=")
    assert script.status_code == 200 and "javascript" in script["Content-Type"]
    code = script.content.decode()
    assert '"validatorUrl": null' in code and 'url: "/openapi.json"' in code


def test_the_sidecar_files_are_served_with_their_type_and_a_cache_lifetime() -> None:
    client = Client()
    response = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")
    assert "max-age" in response["Cache-Control"] and response["Last-Modified"]
    again = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
                       HTTP_IF_MODIFIED_SINCE=response["Last-Modified"])
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["../apps.py", "%2e%2e/apps.py", "redoc/../../__init__.py", "nothing.js", ""])
def test_nothing_but_the_sidecars_files_is_served(path: str) -> None:
    response = Client().get(f"/static/drf_spectacular_sidecar/{path}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_sidecar_files_take_no_other_method() -> None:
    response = Client().post("/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"

"""The web page at / and /rollout and its assets (Django's test client; the page in a real
browser against the real stack: tests/integration/test_web_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.test import Client

from recognition_api import pages


class _Links(HTMLParser):
    """Every URL-valued attribute, and the forms and inputs, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "action", "srcset", "poster", "data", "formaction"):
            if values.get(name):
                self.urls.append(values[name] or "")
        if "style" in values:
            self.inline_styles += 1
        if any(name.startswith("on") for name in values):
            self.inline_scripts += 1
        if tag == "form":
            self.forms.append(values)
        if tag == "input":
            self.inputs.append(values)
        if tag == "style":
            self.inline_styles += 1
        self._in_script = tag == "script" and not values.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def parsed(html: str) -> _Links:
    links = _Links()
    links.feed(html)
    return links


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.mark.parametrize("path", ["/", "/rollout"])
def test_the_page_loads_without_a_key(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "Choose a photo" in html and 'capture="environment"' in html and "Rollout" in html
    assert response["Content-Security-Policy"] == pages.CONTENT_SECURITY_POLICY


def test_each_path_opens_its_own_view(client: Client) -> None:
    assert 'data-view="recognize"' in client.get("/").content.decode()
    assert 'data-view="rollout"' in client.get("/rollout").content.decode()


def test_the_page_names_no_external_url(client: Client) -> None:
    links = parsed(client.get("/").content.decode())
    assert links.urls, "the page links its stylesheet, script and icon"
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//") or url == "#", url
    assert links.inline_scripts == 0 and links.inline_styles == 0  # the CSP allows neither


def test_the_assets_name_no_external_url() -> None:
    for name in ("app.css", "app.js"):
        text = (pages.ASSETS / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), name
        assert "@import" not in text and "url(" not in text.replace("URL.createObjectURL(", "")
    svg = (pages.ASSETS / "icon.svg").read_text()
    assert re.findall(r"https?://[^\"']+", svg) == ["http://www.w3.org/2000/svg"]  # a namespace, never fetched


def test_the_content_security_policy_keeps_everything_on_this_origin() -> None:
    policy = dict(part.strip().split(" ", 1) for part in pages.CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    # A form never submits anywhere, so a key typed into one cannot end up in a URL.
    assert policy["form-action"] == "'none'"


def test_every_asset_the_page_names_is_served_and_cached(client: Client) -> None:
    links = parsed(client.get("/").content.decode())
    assets = sorted({url for url in links.urls if url.startswith("/ui/")})
    assert len(assets) == 3, assets
    types = {"app.css": "text/css", "app.js": "text/javascript", "icon.svg": "image/svg+xml"}
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith(types[url.rsplit("/", 1)[1]])
        assert "immutable" in response["Cache-Control"]
        again = client.get(url, HTTP_IF_NONE_MATCH=response["ETag"])
        assert again.status_code == 304 and not again.content


def test_an_asset_under_an_old_hash_is_served_but_not_cached_for_long(client: Client) -> None:
    response = client.get("/ui/0123456789abcdef/app.js")
    assert response.status_code == 200 and response["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/ui/x/settings.py", "/ui/x/..%2Fpages.py", "/ui/x/web.html", "/ui/app.js"])
def test_nothing_but_the_assets_is_served(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_only_answers_get(client: Client) -> None:
    assert client.post("/").status_code == 405


def test_the_key_is_typed_into_a_field_that_no_form_submission_carries(client: Client) -> None:
    links = parsed(client.get("/").content.decode())
    key_input = next(i for i in links.inputs if i.get("id") == "key-input")
    assert key_input["type"] == "password" and "name" not in key_input  # never serialized into a query
    assert key_input["autocomplete"] == "off"
    assert all((form.get("method") or "").lower() == "post" for form in links.forms)


def test_the_script_sends_the_key_only_in_the_authorization_header() -> None:
    script = (pages.ASSETS / "app.js").read_text()
    # The key is read in one place and used in one place: the header.
    assert script.count("sessionStorage.getItem") == 1
    assert re.findall(r"\{ Authorization: \"Bearer \" \+ key \}", script)
    assert "localStorage" not in script and "document.cookie" not in script
    assert "console." not in script  # never logged
    for url in re.findall(r"(?:fetch|getJson|open)\(([^)]*)\)", script):
        assert "key" not in url.lower(), url
    assert "URLSearchParams" not in script and "location.search" not in script

"""The web page's files, served by the API (no browser, no Redis): what is served at `/`,
that the page is accessible by construction (labels, live regions, keyboard-reachable
controls), that its JavaScript parses, and that CORS lets a portal on another origin call
the API (preflight with the headers the page and the SDK send)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"


class Page(HTMLParser):
    """Collects what the accessibility checks need from index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.labels_for: set[str] = set()
        self.controls: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.html_lang: str | None = None
        self.roles: dict[str, list[str]] = {}
        self.live: list[str] = []
        self.buttons: list[str] = []
        self._in_button = False
        self._button_text = ""
        self.assets: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "html":
            self.html_lang = a.get("lang")
        if tag == "label" and a.get("for"):
            self.labels_for.add(a["for"])
        if tag in ("input", "select", "textarea"):
            self.controls.append(a)
        if "role" in a:
            self.roles.setdefault(a["role"], []).append(a.get("id", ""))
        if "aria-live" in a:
            self.live.append(a.get("id", ""))
        if tag == "button":
            self._in_button, self._button_text = True, ""
        if tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("rel") == "stylesheet":
            self.assets.append(a["href"])

    def handle_data(self, data):
        if self._in_button:
            self._button_text += data

    def handle_endtag(self, tag):
        if tag == "button":
            self._in_button = False
            self.buttons.append(self._button_text.strip())


@pytest.fixture(scope="module")
def page() -> Page:
    parser = Page()
    parser.feed((STATIC / "index.html").read_text())
    return parser


def test_every_control_has_a_label_and_ids_are_unique(page):
    assert page.html_lang == "en"
    assert len(page.ids) == len(set(page.ids))
    for control in page.controls:
        assert control.get("id") in page.labels_for or control.get("aria-label"), control
    assert all(page.buttons), "a button without text"


def test_status_and_errors_are_announced(page):
    assert "error" in page.roles.get("alert", [])
    assert "status" in page.roles.get("status", [])
    assert "file-choice" in page.live


def test_the_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (only used to syntax-check app.js)")
    for script in ("app.js", "viewer.js"):
        subprocess.run([node, "--check", str(STATIC / script)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from app.main import create_app
    from service.settings import Settings

    # No `with`: the lifespan (Redis, storage) is not needed to serve the page and a preflight.
    return TestClient(create_app(Settings(cors_origins=["http://portal.example"])))


def test_the_api_serves_the_page_and_its_assets(client, page):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text == (STATIC / "index.html").read_text()
    assert set(page.assets) == {"/static/app.js", "/static/viewer.js", "/static/style.css"}
    for asset in page.assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.content == (STATIC / asset.rsplit("/", 1)[1]).read_bytes()
    assert "javascript" in client.get("/static/app.js").headers["content-type"]
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_the_page_calls_only_routes_the_api_has(client):
    script = (STATIC / "app.js").read_text()
    paths = client.app.openapi()["paths"]
    for route in ("/compress", "/decompress", "/jobs/{job_id}", "/jobs/{job_id}/result"):
        assert route in paths
    for used in ("`/${kind}", "/jobs/${job.id}?wait=", "/result`", '"Idempotency-Key"', 'form.append("file"'):
        assert used in script
    params = {p["name"] for p in paths["/jobs/{job_id}"]["get"].get("parameters", [])}
    assert "wait" in params
    viewer = (STATIC / "viewer.js").read_text()
    assert "/jobs/{job_id}/slices/{z}" in paths and "/slices/${want.z}?${params}" in viewer
    slice_params = {p["name"] for p in paths["/jobs/{job_id}/slices/{z}"]["get"]["parameters"]}
    assert "window" in slice_params
    page_windows = set(re.findall(r'<option value="(\w+)"', (STATIC / "index.html").read_text().split('id="window"')[1]
                                  .split("</select>")[0]))
    schema = next(p for p in paths["/jobs/{job_id}/slices/{z}"]["get"]["parameters"] if p["name"] == "window")["schema"]
    offered = set(next(s for s in schema["anyOf"] if "enum" in s)["enum"]) if "anyOf" in schema else set(schema["enum"])
    assert page_windows == offered  # every preset the page offers is one the API takes, and all of them
    compress = {p["name"] for p in paths["/compress"]["post"].get("parameters", [])}
    decompress = {p["name"] for p in paths["/decompress"]["post"].get("parameters", [])}
    assert "profile" in compress and "format" in decompress


def test_cors_lets_a_portal_on_another_origin_submit(client):
    preflight = client.options(
        "/compress",
        headers={
            "Origin": "http://portal.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "idempotency-key, authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://portal.example"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "idempotency-key" in allowed and "authorization" in allowed
    stranger = client.options(
        "/compress", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_the_page_shows_no_worker_host_names_and_the_servers_ratios():
    """Host names of the workers are the operator's business, not the page's; and the page shows
    the server's `ratio` (raw voxels / .nvc) and `upload_ratio`, not a figure of its own."""
    script = (STATIC / "app.js").read_text()
    assert ".worker" not in script and ".device" not in script
    assert "job.ratio" in script and "job.upload_ratio" in script
    assert "input_size / job.output_size" not in script

"""The ``/ui`` routes: the dashboard's three files, and nothing else from anywhere."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from cortex.gateway.routes import ui

APP = Starlette(routes=[Route("/ui", ui.page), Route("/ui/{asset}", ui.asset)])


def test_page_and_assets() -> None:
    client = TestClient(APP)
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media_type)
        assert f'"ui/{name}"' in page.text  # the page links it, relative to the gateway


def test_page_fetches_nothing_from_elsewhere() -> None:
    client = TestClient(APP)
    for name in ("/ui", "/ui/app.js", "/ui/style.css"):
        text = client.get(name).text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "@import" not in text, name


def test_no_path_leaves_the_ui_folder() -> None:
    client = TestClient(APP)
    for path in (
        "/ui/missing.js",
        "/ui/%2e%2e",
        "/ui/%2e%2e%2f__init__.py",
        "/ui/..%2Froutes%2Fui.py",
        "/ui/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui/__init__.py",
        "/ui/index.html%00.py",
    ):
        response = client.get(path)
        assert response.status_code == 404, path

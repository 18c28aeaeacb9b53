"""The ``/ui`` dashboard of a real gateway, in headless Chromium (Debian's, driven by
Playwright): the nodes and models of a running fleet, the charts, and an API key.

A screenshot of the page is left in the test's tmp dir and in
``.cache/screenshots/dashboard.png`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import required
from procs import BUNDLED, MODEL, Gateway, Neuron, free_port, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".cache" / "screenshots"
KEY = "sk-dashboard-test"
ADMIN = "dashboard-admin-token"


def fleet_config(neuron: Neuron, api_key: str | None = None) -> str:
    """``n1`` (the session's neuron) and ``n2``, configured with nothing listening."""
    keys = f'api_keys = ["{api_key}"]\nadmin_token = "{ADMIN}"\n' if api_key else ""
    return f"""
[gateway]
poll_interval_s = 0.5
{keys}
[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"

[[neurons]]
name = "n2"
endpoint = "http://127.0.0.1:{free_port()}"
"""


MODELS = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\npinned = true\n'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        required.missing(f"{CHROMIUM} is missing: scripts/debian-tools.sh installs it")
    sync_api = required.module("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def fleet(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    process = Gateway(tmp_path_factory.mktemp("dashboard"), fleet_config(neuron), MODELS, {MODEL})
    yield process
    process.stop()


def test_dashboard_shows_the_fleet(fleet: Gateway, page: Any, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0)
    for question in ("Say hi.", "Count to three.", "Name a colour."):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=8
        )

    page.goto(fleet.url + "/ui")
    n1, n2 = page.locator('.node[data-node="n1"]'), page.locator('.node[data-node="n2"]')
    n1.wait_for()
    assert n1.locator(".node-name").inner_text() == "n1"
    assert n1.locator(".node-status").inner_text() == "up"
    assert n2.locator(".node-status").inner_text() == "down"
    assert n1.locator(".device").count() >= 1
    assert n1.locator('.meter[data-kind="memory"] .fill').count() >= 1
    row = n1.locator(f'tr.model[data-model="{MODEL}"]')
    assert row.locator(".model-id").inner_text() == MODEL
    assert row.locator(".model-state").inner_text() == "ready"
    assert row.locator(".model-in-flight").inner_text().isdigit()
    assert row.locator(".model-queued").inner_text().isdigit()
    catalogued = page.locator(f'#catalogue tr.catalogue-model[data-model="{MODEL}"]')
    assert "ready on n1" in catalogued.locator(".model-placements").inner_text()
    assert page.locator("#connection").get_attribute("data-state") == "live"
    assert page.locator("figure.chart").count() == 3

    # The charts show what /fleet/stats has: the three requests above (a request is
    # recorded as its response ends, a moment after the client has it: wait for that).
    def stats() -> dict:
        return httpx.get(fleet.url + "/fleet/stats?span_s=600&step_s=10", timeout=5).json()

    wait_for(lambda: bool(stats()["models"]), "the requests in /fleet/stats")
    assert MODEL in stats()["models"]
    page.locator(f'figure[data-chart="requests"] path[data-model="{MODEL}"]').wait_for()
    assert page.locator(f'#legend li[data-model="{MODEL}"]').count() == 1
    assert page.locator("figure.chart .nodata").count() == 0

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "dashboard.png")


def test_dashboard_asks_for_the_admin_token(neuron: Neuron, page: Any, tmp_path: Path) -> None:
    config = fleet_config(neuron, KEY)
    gateway = Gateway(tmp_path, config, MODELS, {MODEL}, api_key=KEY, admin_token=ADMIN)
    try:
        # the page and its assets need no key; the data needs the admin token
        assert httpx.get(gateway.url + "/ui", timeout=5).status_code == 200
        assert httpx.get(gateway.url + "/fleet", timeout=5).status_code == 401
        page.goto(gateway.url + "/ui")
        page.locator('#connection[data-state="key"]').wait_for()
        assert "admin token" in page.locator("#notice").inner_text()
        # an API key is not enough: the fleet view is an admin route
        page.fill("#api-key", KEY)
        page.click("#key-form button[type=submit]")
        page.wait_for_function(
            "document.querySelector('#notice').innerText.includes('needs the admin token')"
        )
        assert page.locator('#connection[data-state="key"]').count() == 1
        page.fill("#api-key", ADMIN)
        page.click("#key-form button[type=submit]")
        page.locator('.node[data-node="n1"] .node-status').wait_for()
        assert page.locator('.node[data-node="n1"] .node-status').inner_text() == "up"
        assert page.locator("#notice").is_hidden()
        # a gateway that has served nothing yet: every chart says so
        page.locator('figure[data-chart="requests"] .nodata').wait_for()
        assert page.locator("figure.chart .nodata").count() == 3
        assert "no requests yet" in page.locator('figure[data-chart="requests"]').inner_text()
        # the key stays in the browser: a reload needs no typing
        page.reload()
        page.locator(f'tr.model[data-model="{MODEL}"]').wait_for()
        assert page.locator("#api-key").input_value() == ADMIN
        # a gateway that goes away: said so, the last view kept (dimmed), polls go on
        gateway.stop()
        page.locator('#connection[data-state="down"]').wait_for()
        assert "retrying" in page.locator("#connection").inner_text()
        assert page.locator('.node[data-node="n1"]').count() == 1
        assert page.locator("body").get_attribute("data-stale") is not None
    finally:
        gateway.stop()


def test_ui_serves_only_its_own_files(fleet: Gateway) -> None:
    page = httpx.get(fleet.url + "/ui", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="ui/app.js"' in page.text
    script = httpx.get(fleet.url + "/ui/app.js", timeout=5)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    css = httpx.get(fleet.url + "/ui/style.css", timeout=5)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for path in (
        "/ui/missing.js",
        "/ui/%2e%2e%2f__init__.py",
        "/ui/..%2Froutes%2Fui.py",
        "/ui/%2e%2e%2f%2e%2e%2fgateway%2fapp.py",
        "/ui/__init__.py",
    ):
        response = httpx.get(fleet.url + path, timeout=5)
        assert response.status_code == 404, path
        assert "import" not in response.text, path

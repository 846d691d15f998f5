"""Browser fixtures: a real server (uvicorn in a subprocess, demo data, SQLite) and Debian's
Chromium driven by Playwright.

Chromium comes from the distribution (``apt-get install -y chromium``); Playwright's own
browser download is never used. ``TRIAGE_CHROMIUM`` overrides the executable path.
Screenshots go to ``test-artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("TRIAGE_CHROMIUM", "/usr/bin/chromium")
DEMO_CASES = 80


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Load the demo (cases, trained model, knowledge base, users) and serve it."""
    from triage import demo, migrate, users
    from triage.settings import Settings

    data = tmp_path_factory.mktemp("console-demo")
    env = {
        **os.environ,
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_DATA_DIR": str(data),
        "TRIAGE_WORKER_ENABLED": "false",
    }
    settings = Settings(environment="test", data_dir=data, worker_enabled=False)
    migrate.upgrade(settings)
    demo.load(settings, DEMO_CASES)
    passwords = users.ensure_demo_users(settings)
    port = _free_port()
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield {"base": base, "passwords": passwords, "settings": settings}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: sync_playwright keeps an asyncio loop running in the main
    # thread until it exits, which breaks every later async test (anyio) in the same run.
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, demo_server: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(
        base_url=demo_server["base"], viewport={"width": 1360, "height": 900}, accept_downloads=True
    )
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, server: dict[str, Any], username: str) -> None:
    page.goto("/console/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(server["passwords"][username])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    assert "/console/login" not in page.url, page.content()[:2000]

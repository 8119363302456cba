"""The operator's page (/ui) in a real browser: Debian's Chromium driven by Playwright (``make browser``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import sync_playwright

from tests import harness

T = TypeVar("T")
CHROMIUM = os.environ.get("STREAMAPP_CHROMIUM", "/usr/bin/chromium")
# As root, in a sandbox without outside network: no sandbox, no background connections.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ROWS = "#inv-table tbody tr[data-id]"


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Call the harness from another thread: Playwright's sync API runs an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def test_ui__shows_what_the_api_says_and_resumes_a_paused_invocation(workers, tmp_path: Path):
    worker = workers.new()
    for key in ("u1", "u2", "u3"):
        assert worker.request("POST", f"/Test/{key}/Nap/send", {"tag": key, "seconds": 3600})[0] == 202
    _, body = worker.request("POST", "/Paused/ui/Stuck/send", {"tag": "stuck", "failures": 3})
    paused = body["invocationId"]
    harness.wait_for(lambda: worker.invocation(paused)["status"] == "paused", timeout=30, what="the pause")
    harness.wait_for(lambda: sum(r["status"] == "sleeping" for r in worker.get("/invocations")["invocations"]) == 3,
                     timeout=30, what="three sleepers")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(worker.url + "/ui")
            page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 4")
            shown = page.eval_on_selector_all(ROWS, "rows => rows.map(r => [r.dataset.id, r.cells[3].textContent])")
            api = off_loop(worker.get, "/invocations")
            assert dict(shown) == {r["id"]: r["status"] for r in api["invocations"]}
            assert page.inner_text("#total") == str(api["total"]) == "4"

            page.select_option("#f-status", "paused")
            page.click("#apply")
            page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 1")
            page.click(f"tr[data-id='{paused}']")
            page.wait_for_selector("#act-resume")
            assert page.inner_text("#detail-status") == "paused"
            assert page.inner_text("#key-queue").startswith(paused)
            page.click("#act-resume")
            done = off_loop(lambda: harness.wait_for(lambda: worker.invocation(paused)["status"] == "completed"
                                                     and worker.invocation(paused), timeout=30,
                                                     what="the resumed invocation"))
            assert done["result"] == "unstuck"
            # The page follows: its detail shows the outcome (it refreshes every 3 s).
            page.wait_for_function("document.querySelector('#detail-status')?.textContent === 'completed'",
                                   timeout=15_000)
            assert "unstuck" in page.inner_text("#detail-result")
            page.select_option("#f-status", "")
            page.click("#apply")
            page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 3")
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "ui.png").stat().st_size > 10_000

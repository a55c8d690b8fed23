"""The dashboard, a target's chart and a batch's timeline in Chromium, after real sends to the sandbox."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from tests.support.webapp import WebApp, first_login, nav, shot

SENT = 12
REFUSED = 2
WIDER_THAN_390 = """() => [...document.querySelectorAll('main *')]
    .filter(e => e.getBoundingClientRect().right > 391).slice(0, 8)
    .map(e => `${e.tagName}.${e.className}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`)"""


def batch(web: WebApp, messages: list[dict[str, Any]]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {web.admin_token}"}
    body = {"target": SANDBOX_TARGET_NAME, "messages": messages, "wait": True, "timeout": 60}
    answer = httpx.post(f"{web.base_url}/api/v1/send-email/batch", json=body, headers=headers, timeout=90)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def message(i: int, body: str = "hello") -> dict[str, Any]:
    return {"from": "robot@example.test", "to": [f"user{i}@example.test"], "subject": f"#{i}", "body": body}


def send_some(web: WebApp) -> str:
    """SENT messages through the sandbox, then REFUSED that it refuses (552: too big for it)."""
    sent = batch(web, [message(i) for i in range(SENT)])
    assert sent["counts"] == {"succeeded": SENT}
    limit = web.store.max_bytes
    web.store.max_bytes = 4_000
    try:
        refused = batch(web, [message(i, body="x" * 6_000) for i in range(REFUSED)])
    finally:
        web.store.max_bytes = limit
    assert refused["counts"] == {"failed": REFUSED}
    return str(sent["run_id"])


def chart_sum(page: Page, figure: str, dataset: int) -> int:
    script = """([figure, dataset]) => {
        const canvas = document.querySelector(figure + " canvas");
        const chart = window.Chart.getChart(canvas);
        return chart.data.datasets[dataset].data.reduce((a, b) => a + b, 0);
    }"""
    return int(page.evaluate(script, [figure, dataset]))


def test_dashboard_shows_the_sends_failures_and_charts(page: Page, web: WebApp) -> None:
    run_id = send_some(web)
    first_login(page, web)
    nav(page, "Dashboard")
    expect(page).to_have_url(f"{web.base_url}/")
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()

    row = page.locator(f'#delivery-totals tr[data-target="{SANDBOX_TARGET_NAME}"]')
    expect(row.locator('[data-figure="sent-24h"]')).to_have_text(str(SENT))
    expect(row.locator('[data-figure="failed-24h"]')).to_have_text(str(REFUSED))
    expect(row.locator('[data-figure="sent-30d"]')).to_have_text(str(SENT))
    everyone = page.locator('#delivery-totals tr[data-target="All targets"]')
    expect(everyone.locator('[data-figure="failed-30d"]')).to_have_text(str(REFUSED))

    reason = page.locator("#failure-reasons tbody tr").first
    expect(reason).to_contain_text("rejected")
    expect(reason).to_contain_text("552")
    expect(reason.locator("td").nth(2)).to_have_text(str(REFUSED))
    expect(page.get_by_text("No message was held back by a rate limit")).to_be_visible()
    expect(page.get_by_text("No workflow has an email trigger")).to_be_visible()

    # The charts are drawn (Chart.js, served by the app) with the same figures.
    hourly = 'figure[data-chart-json="chart-hourly"]'
    page.wait_for_function("() => window.Chart && window.Chart.getChart(document.querySelector('canvas'))")
    assert chart_sum(page, hourly, 0) == SENT and chart_sum(page, hourly, 1) == REFUSED
    assert chart_sum(page, 'figure[data-chart-json="chart-daily"]', 0) == SENT
    label = page.locator(f"{hourly} canvas")
    expect(label).to_have_attribute(
        "aria-label", f"Last 24 hours, per hour: {SENT} sent, {REFUSED} failed, 0 deferred"
    )
    page.get_by_label("Show").select_option(SANDBOX_TARGET_NAME)
    assert chart_sum(page, hourly, 0) == SENT
    shot(page, "dashboard")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the tables scroll in their box
    page.wait_for_timeout(200)
    wide = page.evaluate(WIDER_THAN_390)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
    shot(page, "dashboard-390")
    page.set_viewport_size({"width": 1280, "height": 860})

    # A target's page: its own chart.
    target = web.services.targets.get(SANDBOX_TARGET_NAME)
    page.goto(f"/targets/{target.id}")
    summary = page.locator(f'[data-chart-summary="target-{target.id}"]')
    expect(summary).to_have_text(
        f"Last 24 hours: {SENT} sent, {REFUSED} failed, 0 deferred. "
        f"Last 30 days: {SENT} sent, {REFUSED} failed, 0 deferred."
    )
    assert chart_sum(page, 'figure[data-chart-key="hourly"]', 0) == SENT
    shot(page, "target-chart")

    # A batch's timeline, as the run's page includes it.
    page.goto(f"/runs/{run_id}/timeline")
    expect(page.locator(f'[data-chart-summary="run-{run_id}"]')).to_contain_text(
        f"In all: {SENT} sent, 0 failed"
    )
    assert chart_sum(page, f'#run-{run_id} figure[data-chart="series"]', 0) == SENT
    assert "#}" not in page.locator("main").inner_text()  # the partial's comment stays a comment
    shot(page, "run-timeline")

    # The run's own page includes it (at its run-timeline marker), and stops asking once it ended.
    page.goto(f"/runs/{run_id}")
    expect(page.locator(f'[data-chart-summary="run-{run_id}"]')).to_contain_text(f"In all: {SENT} sent")
    expect(page.locator(f"#run-{run_id}")).not_to_have_attribute("data-chart-refresh", "5")
    shot(page, "run-page-timeline")


def test_dashboard_is_the_home_page_and_asks_for_a_login(page: Page, web: WebApp) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{web.base_url}/login?next=/")
    first_login(page, web)
    page.goto("/")
    expect(page.get_by_text("No send failed in the last 30 days.")).to_be_visible()
    row = page.locator('#delivery-totals tr[data-target="All targets"]')
    expect(row.locator('[data-figure="sent-24h"]')).to_have_text("0")
    missing = page.goto("/charts/runs/no-such-run")
    assert missing is not None and missing.status == 404

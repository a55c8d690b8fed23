"""The Runs pages in Chromium: a batch of 1,000 to the Local sandbox (totals, pages, search by
recipient and Message-ID), a batch followed live while it runs (progress bar, failed first), and
the Runs list's filters, pages and times."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from mailwright.services.run_pages import StepFilter
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from tests.support.smtpserver import Faults, SMTPTestServer
from tests.support.webapp import WebApp, first_login, nav, shot

REFUSED = {f"bad{i}@example.net": (550, "5.1.1 no such user here") for i in (3, 40, 77)}


def lines(count: int, *, to: str = "r{i}@example.net") -> Iterator[tuple[str, str]]:
    for i in range(count):
        message = {
            "from": "batch@example.org",
            "to": [to.format(i=i)],
            "subject": f"Batch #{i}",
            "body": "hi",
        }
        yield f"line {i + 1}", json.dumps(message)


def rows(page: Page) -> int:
    return page.locator("table.batch-steps tbody tr").count()


def test_batch_of_1000_to_the_sandbox_totals_pages_and_search(page: Page, web: WebApp) -> None:
    first_login(page, web)
    created = web.services.batches.create(lines(1000), target=SANDBOX_TARGET_NAME)
    page.goto(f"/runs/{created.run_id}")
    # Polled while it runs; the page reloads itself once the run has ended.
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.get_by_role("region", name="Progress")).to_contain_text("1,000 of 1,000 messages done (100%)")
    expect(page.locator("#run-progress-bar")).to_have_count(0)  # the bar is for a run going on
    totals = page.get_by_role("navigation", name="Filter steps by state")
    expect(totals).to_contain_text("all 1,000")
    expect(totals).to_contain_text("succeeded 1,000")
    expect(page.locator("dt", has_text="Inputs")).to_have_count(0)  # no empty "Inputs {}" line
    pager = page.get_by_role("navigation", name="Pages of messages").first
    expect(pager).to_contain_text("1–50 of 1,000 messages")
    assert rows(page) == 50
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 5000, f"a page of 50 messages is {height} px tall"
    shot(page, "run-batch-1000")

    pager.get_by_role("link", name="Next").click()
    expect(pager).to_contain_text("51–100 of 1,000 messages")
    first = page.locator("table.batch-steps tbody tr").first
    expect(first.get_by_role("cell").first).to_have_text("50")
    expect(first).to_contain_text("r50@example.net")
    pager.get_by_role("link", name="Last").click()
    expect(pager).to_contain_text("951–1,000 of 1,000 messages")
    pager.get_by_role("link", name="First").click()
    expect(pager).to_contain_text("1–50 of 1,000 messages")

    # Search by recipient (any case), then by a part of a Message-ID.
    page.get_by_label("Recipient or Message-ID").fill("R777@Example.NET")
    page.get_by_role("button", name="Search").click()
    expect(pager).to_contain_text("1 of 1 messages")
    expect(page.locator("table.batch-steps tbody tr")).to_contain_text("Batch #777")
    found = web.services.runs.steps_page(created.run_id, StepFilter(), offset=123, limit=1).items[0]
    assert found.message_id is not None
    page.get_by_label("Recipient or Message-ID").fill(found.message_id.strip("<>").split("@")[0])
    page.get_by_role("button", name="Search").click()
    expect(pager).to_contain_text("1 of 1 messages")
    expect(page.locator("table.batch-steps tbody tr")).to_contain_text("r123@example.net")
    page.get_by_label("Recipient or Message-ID").fill("nobody@example.net")
    page.get_by_role("button", name="Search").click()
    expect(pager).to_contain_text("No messages")
    page.get_by_role("link", name="Clear the search").click()
    expect(pager).to_contain_text("1–50 of 1,000 messages")


@pytest.fixture
def refusing_server() -> Iterator[SMTPTestServer]:
    """Refuses three recipients for good (550) and answers each DATA after 20 ms."""
    with SMTPTestServer(faults=Faults(refuse_recipients=REFUSED, delay={"data": 0.02})) as server:
        yield server


def test_running_batch_shows_live_progress_then_failed_first(
    page: Page, web: WebApp, refusing_server: SMTPTestServer
) -> None:
    web.services.targets.create(
        TargetCreate(
            display_name="Slow relay",
            server="127.0.0.1",
            port=refusing_server.port,
            security="none",
            no_account_keys=True,
        )
    )
    first_login(page, web)
    created = web.services.batches.create(
        lines(250, to="bad{i}@example.net"), target="Slow relay", concurrency=1
    )
    page.goto(f"/runs/{created.run_id}")
    bar = page.locator("#run-progress-bar")
    expect(bar).to_be_visible()
    start = int(bar.get_attribute("value") or "0")
    # The bar moves without a reload: the page polls /runs/{id}/progress.json.
    page.wait_for_function(
        "start => { const bar = document.getElementById('run-progress-bar');"
        " return bar !== null && bar.value > start && bar.value < bar.max; }",
        arg=start,
        timeout=20_000,
    )
    region = page.get_by_role("region", name="Progress")
    expect(region).to_contain_text(re.compile(r"of 250 messages done \(\d{1,3}%\)"))
    shot(page, "run-batch-running")
    expect(page.locator("#run-status")).not_to_have_text(re.compile("queued|running"), timeout=60_000)
    totals = page.get_by_role("navigation", name="Filter steps by state")
    links = totals.get_by_role("link")
    expect(links.nth(1)).to_contain_text("failed 3")  # failed first, after "all"
    expect(totals).to_contain_text("succeeded 247")
    # The run's error in the page's words: no command line (the totals and Retry are right here).
    expect(page.get_by_role("alert").first).to_contain_text("3 of 250 messages failed")
    expect(page.get_by_role("alert").first).not_to_contain_text("mailwright runs")
    links.nth(1).click()
    expect(page).to_have_url(re.compile(r"\?state=failed$"))
    table = page.locator("table.batch-steps tbody tr")
    expect(table).to_have_count(3)
    expect(table.first).to_contain_text("bad3@example.net")
    expect(table.first).to_contain_text("550")
    # The search keeps the status filter.
    page.get_by_label("Recipient or Message-ID").fill("bad77@")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"state=failed&q=bad77%40"))
    expect(table).to_have_count(1)
    shot(page, "run-batch-failed-first")
    progress = page.request.get(f"/runs/{created.run_id}/progress.json").json()
    assert progress["total"] == progress["done"] == 250
    assert list(progress["counts"]) == ["failed", "succeeded"]


def send(web: WebApp, target: str, n: int) -> None:
    web.services.runs.start_send_email(
        SendEmailRequest.model_validate(
            {
                "target": target,
                "from": "robot@example.org",
                "to": [f"list{n}@example.net"],
                "subject": f"#{n}",
            }
        )
    )


def test_runs_list_filters_pages_and_times(page: Page, web: WebApp) -> None:
    sandbox = web.services.targets.get(SANDBOX_TARGET_NAME)
    web.services.targets.create(
        TargetCreate(
            display_name="Other relay",
            server="127.0.0.1",
            port=int((sandbox.model_extra or {})["port"]),
            security="none",
            no_account_keys=True,
        )
    )
    for n in range(52):
        send(web, SANDBOX_TARGET_NAME, n)
    for n in range(3):
        send(web, "Other relay", n)
    web.services.batches.create(lines(5), target=SANDBOX_TARGET_NAME)
    first_login(page, web)
    nav(page, "Runs")
    pager = page.get_by_role("navigation", name="Pages of runs").first
    expect(pager).to_contain_text("1–50 of 56 runs")
    expect(page.locator("tbody tr")).to_have_count(50)
    created = page.locator("tbody tr").first.get_by_role("cell").nth(4)
    expect(created.locator("time")).to_have_text(re.compile(r"just now|\d+ s ago"))
    expect(created).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"))
    shot(page, "runs-list-paged")
    pager.get_by_role("link", name="Next").click()
    expect(pager).to_contain_text("51–56 of 56 runs")

    page.get_by_label("Target").select_option("Other relay")
    page.get_by_role("button", name="Filter").click()
    expect(pager).to_contain_text("1–3 of 3 runs")
    expect(page.locator("tbody tr").filter(has_text="Other relay")).to_have_count(3)

    page.get_by_label("Target").select_option("")
    page.get_by_label("Workflow").select_option("Send Email batch")
    page.get_by_role("button", name="Filter").click()
    expect(pager).to_contain_text("1 of 1 runs")
    page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Send Email batch")
    page.go_back()

    page.get_by_label("Workflow").select_option("")
    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("status")).to_contain_text("No run matches these filters")
    page.get_by_role("link", name="Show all runs").first.click()
    expect(pager).to_contain_text("of 56 runs")
    page.goto("/runs?status=bogus")
    expect(page.get_by_text("unknown run status 'bogus'")).to_be_visible()


def test_run_pages_at_phone_width_scroll_only_inside_their_tables(page: Page, web: WebApp) -> None:
    first_login(page, web)
    created = web.services.batches.create(lines(60), target=SANDBOX_TARGET_NAME)
    page.set_viewport_size({"width": 390, "height": 844})
    for address in (f"/runs/{created.run_id}", "/runs"):
        page.goto(address)
        expect(page.locator("table")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{address} is {width} px wide at 390"
    shot(page, "runs-list-390")


def test_a_one_message_run_page_follows_its_status_without_a_reload(page: Page, web: WebApp) -> None:
    with SMTPTestServer(faults=Faults(delay={"data": 2.0})) as slow:
        web.services.targets.create(
            TargetCreate(
                display_name="Slow", server="127.0.0.1", port=slow.port, security="none", no_account_keys=True
            )
        )
        first_login(page, web)
        run_id = web.services.runs.start_send_email(
            SendEmailRequest.model_validate(
                {"target": "Slow", "from": "a@example.org", "to": ["b@example.net"], "subject": "slow"}
            )
        ).id
        page.goto(f"/runs/{run_id}")
        expect(page.locator("#run-status")).to_have_text(re.compile("queued|running"))
        # No reload by the test: the page polls its progress and reloads itself once the run ended.
        expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
        expect(page.get_by_role("region", name="Step send")).to_contain_text("succeeded")

"""The New Target form in Chromium offers a plugin's target type, with its own fields, unchanged.

The recording type (tests/plugins/recording_target.py) keeps a directory, not a server and
a port: the form shows its Directory field when it is chosen, hides the server fields, and
the created target sends through the Send Email page into its JSONL file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from mailwright.plugins import register_target_type, unregister_target_type
from tests.support.webapp import WebApp, first_login, nav, shot


@pytest.fixture
def recording() -> Iterator[None]:
    from tests.plugins.recording_target import RECORDING  # importing registers it

    unregister_target_type(RECORDING.name)
    register_target_type(RECORDING)
    yield
    unregister_target_type(RECORDING.name)


@pytest.mark.usefixtures("recording")
def test_new_target_form_offers_a_plugin_type_and_sends_through_it(
    page: Page, web: WebApp, tmp_path: Path
) -> None:
    box = tmp_path / "box"
    box.mkdir()
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    directory = form.get_by_label("Directory")
    expect(directory).to_be_hidden()  # SMTP, the default type, has no directory
    form.get_by_label("Target Type").select_option("recording")
    expect(directory).to_be_visible()
    expect(form.get_by_label("Protocol")).to_have_value("JSONL")
    for hidden in ("SMTP Server", "Security", "Max connections"):
        expect(form.get_by_label(hidden)).to_be_hidden()
    expect(form.get_by_role("group", name="Sending limits and connections")).to_be_hidden()
    form.get_by_label("Display Name").fill("Recorder")
    form.get_by_label("No Account Keys").select_option("true")
    directory.fill("relative/path")
    form.get_by_role("button", name="Submit").click()
    expect(page.locator("#e-directory")).to_contain_text("absolute path")  # the type's own check
    form.get_by_label("Directory").fill(str(box))
    shot(page, "new-plugin-target")
    form.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Recorder")).to_be_visible()
    expect(page.locator("dl.props")).to_contain_text(str(box))
    created = web.services.targets.get("Recorder")
    assert (created.type, created.directory) == ("recording", str(box))

    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#target-form").get_by_label("Directory")).to_have_value(str(box))
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Recorder")).to_be_visible()

    nav(page, "Send Email")
    page.get_by_label("Target").select_option(created.id)
    page.get_by_label("From", exact=True).fill("robot@example.test")
    page.get_by_label("To", exact=True).fill("alice@example.test")
    page.get_by_label("Subject").fill("Recorded from the web")
    page.get_by_label("Text", exact=True).fill("Hello")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")
    (line,) = [json.loads(text) for text in (box / "sent.jsonl").read_text().splitlines()]
    assert line["recipients"] == ["alice@example.test"] and "Subject: Recorded from the web" in line["data"]

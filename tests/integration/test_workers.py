"""The workers registry: a running worker is listed by the API, the web page and the CLI, and
leaves the list when it stops; a target's worker pool is set and cleared like any setting."""

from __future__ import annotations

import time

import httpx
import pytest

from mailwright.errors import MailwrightError
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate, TargetUpdate
from tests.support.apiserver import APIServer


def test_the_embedded_worker_is_listed_and_leaves_when_it_stops(mw: Services) -> None:
    token = mw.tokens.create("tests").token
    signed_in = mw.web_auth.open_session()
    with APIServer(mw) as server:
        deadline = time.monotonic() + 60
        while not mw.workers.live():
            assert time.monotonic() < deadline, "the worker of `serve` never registered"
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{server.base_url}/api/v1/workers", headers=headers, timeout=30).json()
        assert len(listed) == 1 and listed[0]["broker"] == "embedded" and listed[0]["pool"] is None
        assert listed[0]["concurrency"] == mw.settings.worker_concurrency
        page = httpx.get(
            f"{server.base_url}/workers", headers={"Cookie": f"mw_session={signed_in.cookie}"}, timeout=30
        )
        assert page.status_code == 200 and listed[0]["host"] in page.text and "(default)" in page.text
        assert httpx.get(f"{server.base_url}/api/v1/workers", timeout=30).status_code == 401
    assert mw.workers.live() == []  # a graceful stop takes the worker's row with it


def test_a_targets_worker_pool_is_validated_set_and_cleared(mw: Services) -> None:
    fields = {"display_name": "Inside", "server": "10.1.2.3", "port": 25, "security": "none"}
    target = mw.targets.create(
        TargetCreate.model_validate({**fields, "no_account_keys": True, "worker_pool": "dmz"})
    )
    assert mw.targets.resolve(target.id).pool == "dmz"
    mw.targets.update(target.id, TargetUpdate.model_validate({"worker_pool": ""}))
    assert mw.targets.resolve(target.id).pool is None
    with pytest.raises(MailwrightError, match="worker_pool"):
        mw.targets.update(target.id, TargetUpdate.model_validate({"worker_pool": "no spaces"}))

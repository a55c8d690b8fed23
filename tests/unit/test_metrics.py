"""The metrics module on its own: labels stay bounded, and a database that fails does not fail a scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mailwright import metrics
from mailwright.errors import NotFoundError, TargetConnectError


def scraped(exposition: metrics.Exposition) -> dict[str, float]:
    text = exposition.render().decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def failing_database() -> metrics.RunGauges:
    raise ConnectionError("the database restarted")


def test_a_failing_database_read_is_a_gauge_not_a_failed_scrape() -> None:
    found = scraped(metrics.Exposition(read_runs=failing_database))
    assert found["mailwright_database_up[]"] == 0
    assert not any(name.startswith("mailwright_queue_depth") for name in found)


def test_the_database_figures_are_what_the_callable_reads() -> None:
    gauges = metrics.RunGauges(
        by_status={("queued", ""): 7, ("running", ""): 2, ("queued", "dmz"): 3}, due={"": 5, "dmz": 3}
    )
    found = scraped(metrics.Exposition(read_runs=lambda: gauges))
    assert found["mailwright_database_up[]"] == 1
    assert found["mailwright_runs[('pool', ''), ('status', 'queued')]"] == 7
    assert found["mailwright_runs[('pool', ''), ('status', 'running')]"] == 2
    assert found["mailwright_runs[('pool', 'dmz'), ('status', 'queued')]"] == 3
    assert found["mailwright_queue_depth[('pool', '')]"] == 5
    assert found["mailwright_queue_depth[('pool', 'dmz')]"] == 3


def test_the_target_label_is_the_one_the_error_names_else_the_runs() -> None:
    named = TargetConnectError("refused", target="Relay")
    assert metrics.target_label(named, "relay") == "Relay"
    assert metrics.target_label(TargetConnectError("refused"), "relay") == "relay"
    assert metrics.target_label(NotFoundError("no target named 'x'"), None) == metrics.NO_TARGET
    assert len(metrics.target_label(None, "x" * 10_000)) == 200


def test_counts_land_under_their_labels() -> None:
    exposition = metrics.Exposition()
    before = scraped(exposition)
    key = "mailwright_send_steps_total[('outcome', 'partial'), ('target', 'Unit Relay')]"
    metrics.sent({"status": "partial", "target": "Unit Relay", "recipients": ["a@example.org"]})
    metrics.send_step(metrics.SendOutcome.DEFERRED, target="Unit Relay")
    after = scraped(exposition)
    assert after[key] == before.get(key, 0) + 1
    deferred = "mailwright_send_steps_total[('outcome', 'deferred'), ('target', 'Unit Relay')]"
    assert after[deferred] == before.get(deferred, 0) + 1
    assert not any("example.org" in name for name in after)

"""The dashboard (the home page) and the charts' data: a target's, and a batch run's timeline.

The figures come from services/stats.py; the charts are drawn in the browser by Chart.js
(static/vendor/chart.js-4.6.1, with static/charts.js), from JSON embedded in the page or
fetched from the two addresses below, so the partials in templates/charts/ need nothing
from the page that includes them but a target's or a run's id.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from mailwright.services.stats import Counts, DeliverySeries, RunTimeline, Span
from mailwright.web.deps import ServicesDep
from mailwright.web.render import render
from mailwright.web.roles import ViewerSession

router = APIRouter(include_in_schema=False)

LABEL_FORMATS = {Span.HOURS: "%H:00", Span.DAYS: "%b %d"}


@router.get("/")
def dashboard(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    figures = services.stats.dashboard()
    return render(
        request,
        "dashboard.html",
        session=session,
        section="dashboard",
        figures=figures,
        totals=_totals(figures.hourly, figures.daily),
        charts={"hourly": series_json(figures.hourly), "daily": series_json(figures.daily)},
    )


@router.get("/charts/targets/{ref}")
def target_chart(ref: str, services: ServicesDep, _session: ViewerSession) -> JSONResponse:
    """A target's sends per hour (24 h) and per day (30 days)."""
    name = services.targets.get(ref).display_name
    hourly = services.stats.delivery(Span.HOURS, target=name)
    daily = services.stats.delivery(Span.DAYS, target=name)
    return JSONResponse({"target": name, "hourly": series_json(hourly), "daily": series_json(daily)})


@router.get("/charts/runs/{run_id}")
def run_chart(run_id: str, services: ServicesDep, _session: ViewerSession) -> JSONResponse:
    """A run's send steps over time (a batch's timeline)."""
    return JSONResponse(timeline_json(services.stats.run_timeline(run_id)))


@router.get("/runs/{run_id}/timeline")
def run_timeline_page(
    request: Request, run_id: str, services: ServicesDep, session: ViewerSession
) -> HTMLResponse:
    """The timeline alone, on a page of its own (the run's page includes the same partial)."""
    run = services.runs.get(run_id)
    return render(request, "charts/run_timeline_page.html", session=session, section="runs", run=run)


def series_json(series: DeliverySeries) -> dict[str, Any]:
    labels = [start.strftime(LABEL_FORMATS[series.span]) for start in series.starts]
    targets = {name: counts.model_dump() for name, counts in series.targets.items()}
    return {
        "span": series.span.value,
        "labels": labels,
        "total": series.total().model_dump(),
        "targets": targets,
    }


def timeline_json(timeline: RunTimeline) -> dict[str, Any]:
    fmt = "%H:%M:%S" if timeline.seconds < 3600 else "%m-%d %H:%M"
    return {
        "run_id": timeline.run_id,
        "finished": timeline.finished,
        "seconds": timeline.seconds,
        "labels": [start.strftime(fmt) for start in timeline.starts],
        "total": timeline.counts.model_dump(),
    }


def _totals(hourly: DeliverySeries, daily: DeliverySeries) -> list[tuple[str, Counts, Counts]]:
    """Per target (and "All targets" first): its 24-hour and 30-day series."""
    names = sorted(set(hourly.targets) | set(daily.targets))
    zeros = Counts(sent=[0], failed=[0], deferred=[0])
    rows = [(name, hourly.targets.get(name, zeros), daily.targets.get(name, zeros)) for name in names]
    return [("All targets", hourly.total(), daily.total()), *rows]

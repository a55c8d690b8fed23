// W3 dash: the dashboard's, a target's and a run's charts, drawn with Chart.js
// (static/vendor/chart.js-4.6.1). A chart is a <figure data-chart="series"> whose data is
// a {labels, total: {sent, failed, deferred}, targets?: {name: {...}}} object, either in a
// <script type="application/json" id=...> named by data-chart-json, or under the key
// data-chart-key of the JSON fetched from its group's data-chart-src.
"use strict";
(function () {
  if (window.mailwrightCharts) return; // a page that includes two partials loads this twice
  window.mailwrightCharts = true;
  const COLORS = { sent: "#1b7a3d", failed: "#b3261e", deferred: "#b86e00" };

  function datasets(counts) {
    return [
      { label: "Sent", data: counts.sent, backgroundColor: COLORS.sent, stack: "done" },
      { label: "Failed", data: counts.failed, backgroundColor: COLORS.failed, stack: "done" },
      {
        label: "Deferred", data: counts.deferred, type: "line", stack: "deferred",
        borderColor: COLORS.deferred, backgroundColor: COLORS.deferred, pointRadius: 2, tension: 0.2,
      },
    ];
  }

  function pick(series, target) {
    return target && series.targets && series.targets[target] ? series.targets[target] : series.total;
  }

  function sum(values) {
    return values.reduce(function (a, b) { return a + b; }, 0);
  }

  function describe(counts) {
    return sum(counts.sent) + " sent, " + sum(counts.failed) + " failed, " + sum(counts.deferred) + " deferred";
  }

  function draw(figure, series, target) {
    const canvas = figure.querySelector("canvas");
    const counts = pick(series, target);
    const old = window.Chart.getChart(canvas);
    if (old) {
      old.data.labels = series.labels;
      old.data.datasets = datasets(counts);
      old.update("none");
    } else {
      new window.Chart(canvas, {
        type: "bar",
        data: { labels: series.labels, datasets: datasets(counts) },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
        },
      });
    }
    canvas.setAttribute("aria-label", figure.querySelector("figcaption").textContent + ": " + describe(counts));
    figure.dataset.totals = describe(counts);
  }

  function embedded(figure) {
    return JSON.parse(document.getElementById(figure.dataset.chartJson).textContent);
  }

  function drawEmbedded(group, target) {
    group.querySelectorAll("figure[data-chart-json]").forEach(function (figure) {
      draw(figure, embedded(figure), target);
    });
  }

  function summary(group, data) {
    const line = document.querySelector('[data-chart-summary="' + group.id + '"]');
    if (!line) return;
    if (data.hourly) {
      line.textContent = "Last 24 hours: " + describe(data.hourly.total) + ". Last 30 days: " + describe(data.daily.total) + ".";
    } else {
      line.textContent = "In all: " + describe(data.total) + " (bars of " + data.seconds + " s).";
    }
  }

  async function drawFetched(group) {
    let data;
    try {
      const answer = await fetch(group.dataset.chartSrc, { headers: { Accept: "application/json" } });
      if (!answer.ok) throw new Error("the server answered " + answer.status);
      data = await answer.json();
    } catch (error) {
      const line = document.querySelector('[data-chart-summary="' + group.id + '"]');
      if (line) line.textContent = "The figures could not be loaded (" + error.message + "): reload the page to try again.";
      return;
    }
    group.querySelectorAll("figure[data-chart]").forEach(function (figure) {
      draw(figure, figure.dataset.chartKey ? data[figure.dataset.chartKey] : data, "");
    });
    summary(group, data);
    group.dataset.chartLoaded = "true";
    const every = Number(group.dataset.chartRefresh || 0);
    if (every > 0 && !data.finished) setTimeout(function () { drawFetched(group); }, every * 1000);
  }

  function start() {
    if (!window.Chart) return;
    document.querySelectorAll("select[data-chart-pick]").forEach(function (select) {
      const group = document.getElementById(select.dataset.chartPick);
      drawEmbedded(group, select.value);
      select.addEventListener("change", function () { drawEmbedded(group, select.value); });
    });
    document.querySelectorAll("[data-chart-src]").forEach(function (group) {
      if (!group.dataset.chartStarted) {
        group.dataset.chartStarted = "true";
        drawFetched(group);
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

// The comparison page: the server's figure holds every run's every series (one trace each, with
// its step and wall-time columns in trace.meta); this switches the metric, the x axis and the EMA
// smoothing, and shows or hides runs (checkboxes, or a click on the legend). Grouped by a setting,
// the figure holds each group's mean and band per metric instead, and only the metric switches.
"use strict";

(function () {
  const chart = document.getElementById("compare-chart");
  const parcoords = document.getElementById("parcoords-chart");
  if (parcoords) TBCharts.draw(parcoords);
  if (!chart || !TBCharts.draw(chart)) return;

  const metricSelect = document.getElementById("curve-metric");
  // The words come with the figure (layout.meta, from app/pages/compare.py), so they match the server's.
  const labels = chart.layout.meta || {};
  const X_TITLES = labels.x_titles || {};
  const metricLabel = (metric) => (labels.metric_labels || {})[metric] || metric;

  // Grouped (?group_by=…): each group's mean and ± std band per metric, over the epochs; only the metric switches.
  if (chart.data.some((trace) => trace.meta && trace.meta.group !== undefined)) {
    const showMetric = () => {
      const metric = metricSelect.value;
      Plotly.update(chart, { visible: chart.data.map((trace) => trace.meta.metric === metric) }, {
        "title.text": metricLabel(metric) + ": mean ± std",
        "yaxis.title.text": metricLabel(metric),
        "xaxis.autorange": true,
        "yaxis.autorange": true,
      });
    };
    metricSelect.addEventListener("change", showMetric);
    showMetric();
    return;
  }

  const xSelect = document.getElementById("curve-x");
  const smoothing = document.getElementById("curve-smoothing");
  const smoothingValue = document.getElementById("smoothing-value");
  const toggles = Array.from(document.querySelectorAll("[data-series-toggle]"));

  // The server's columns of each trace, kept before anything is changed.
  const columns = chart.data.map((trace) => ({
    runId: trace.meta.run_id,
    metric: trace.meta.metric,
    epoch: trace.x.slice(),
    step: trace.meta.step,
    time: trace.meta.time,
    y: trace.y.slice(),
  }));
  const hiddenRuns = new Set();

  function apply() {
    const metric = metricSelect.value, axis = xSelect.value, weight = Number(smoothing.value);
    smoothingValue.textContent = weight.toFixed(2);
    const update = { x: [], y: [], visible: [] };
    columns.forEach((c) => {
      update.x.push(c[axis]);
      update.y.push(TBCharts.ema(c.y, weight));
      update.visible.push(c.metric !== metric ? false : hiddenRuns.has(c.runId) ? "legendonly" : true);
    });
    Plotly.update(chart, update, {
      "title.text": metricLabel(metric) + (weight ? " (smoothed " + weight.toFixed(2) + ")" : ""),
      "xaxis.title.text": X_TITLES[axis],
      "yaxis.title.text": metricLabel(metric),
      "xaxis.autorange": true,
      "yaxis.autorange": true,
    });
    toggles.forEach((box) => { box.checked = !hiddenRuns.has(Number(box.dataset.seriesToggle)); });
  }

  function setHidden(runId, hidden) {
    if (hidden) hiddenRuns.add(runId); else hiddenRuns.delete(runId);
  }

  metricSelect.addEventListener("change", apply);
  xSelect.addEventListener("change", apply);
  smoothing.addEventListener("input", apply);
  toggles.forEach((box) => box.addEventListener("change", () => {
    setHidden(Number(box.dataset.seriesToggle), !box.checked);
    apply();
  }));

  // Legend clicks go through the same state as the checkboxes (one run = one legend entry per metric).
  chart.on("plotly_legendclick", (event) => {
    const runId = columns[event.curveNumber].runId;
    setHidden(runId, !hiddenRuns.has(runId));
    apply();
    return false;
  });
  chart.on("plotly_legenddoubleclick", (event) => {
    const runId = columns[event.curveNumber].runId;
    const others = toggles.map((box) => Number(box.dataset.seriesToggle)).filter((id) => id !== runId);
    const isolated = others.every((id) => hiddenRuns.has(id)) && !hiddenRuns.has(runId);
    others.forEach((id) => setHidden(id, !isolated));
    setHidden(runId, false);
    apply();
    return false;
  });

  apply();
})();

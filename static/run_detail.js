// One run's page: draws the server-built charts, then follows the run live over Server-Sent Events
// (/api/runs/{id}/events): status, progress, history, and new metric points appended to the charts
// with Plotly.extendTraces. Also the buttons (cancel, delete) and the name/tags/notes form.
"use strict";

(function () {
  const run = TB.readJsonBlock("run-data");
  const messages = document.getElementById("run-messages");
  const RECONNECT_MS = 3000;

  // ---------------------------------------------------------------- charts ---
  const charts = Array.from(document.querySelectorAll(".chart[data-figure]")).map((el) => ({
    el, suffix: el.dataset.suffix, prefix: el.dataset.prefix || "", scale: Number(el.dataset.scale) || 1,
    repeatsSteps: el.dataset.repeatsSteps === "1", x: el.dataset.x || "epoch",
  }));
  const lastStep = {}; // series name → last step drawn
  charts.forEach((chart) => {
    TBCharts.draw(chart.el);
    // Colours, thresholds and hover format come with the figure (layout.meta, from app/pages/charts.py).
    chart.style = (chart.el.layout && chart.el.layout.meta) || {};
    (chart.el.data || []).forEach((trace) => {
      if (trace.meta && trace.meta.metric) lastStep[trace.meta.metric] = trace.meta.last_step;
    });
  });

  function chartFor(name) {
    return charts.find((chart) => name.startsWith(chart.prefix) && name.endsWith(chart.suffix));
  }

  function traceIndex(gd, name) {
    return (gd.data || []).findIndex((trace) => trace.meta && trace.meta.metric === name);
  }

  // A new series' legend name, colour and y axis, by the rules the server sent (app/pages/charts.py):
  // system series by their unit's row, the others by their split.
  function seriesLook(style, name) {
    const system = style.system;
    if (system && name.startsWith("system/")) {
      const short = name.slice("system/".length);
      const row = system.rows.find((r) => name.endsWith(r.suffix));
      return { name: system.names[short] || short, colour: system.colours[name] || style.other_colour, yaxis: row.yaxis };
    }
    return { name, colour: (style.split_colours || {})[name.split("/")[0]] || style.other_colour, yaxis: "y" };
  }

  // Append one series fragment {name, step, epoch, time, value} to its chart (x: the chart's data-x).
  function appendFragment(fragment) {
    const chart = chartFor(fragment.name);
    if (!chart) return;
    const after = lastStep[fragment.name] ?? -1;
    const xs = [], ys = [];
    fragment.step.forEach((step, i) => {
      // Already drawn (the stream starts a little before the page's data ends); system samples may
      // repeat a step while an evaluation runs, so there only older steps are dropped.
      if (step < after || (step === after && !chart.repeatsSteps)) return;
      const value = fragment.value[i];
      xs.push(fragment[chart.x][i]);
      ys.push(value === null ? null : value * chart.scale);
    });
    if (!xs.length) return;
    lastStep[fragment.name] = fragment.step[fragment.step.length - 1];
    const gd = chart.el;
    if (gd.layout.annotations && gd.layout.annotations.length) {
      // The server drew an empty chart ("No data yet"): show the axes now.
      const shown = { annotations: [] };
      TBCharts.axisKeys(gd.layout).forEach((key) => { shown[key + ".visible"] = true; });
      Plotly.relayout(gd, shown);
    }
    const index = traceIndex(gd, fragment.name);
    if (index < 0) {
      const look = seriesLook(chart.style, fragment.name);
      Plotly.addTraces(gd, {
        type: "scatter", mode: "lines+markers", name: look.name, x: xs, y: ys, yaxis: look.yaxis,
        meta: { metric: fragment.name }, line: { color: look.colour, width: 2 }, marker: { size: 5, color: look.colour },
        hovertemplate: chart.style.hover,
      });
      return;
    }
    Plotly.extendTraces(gd, { x: [xs], y: [ys] }, [index]);
    const trace = gd.data[index];
    if (trace.x.length > chart.style.markers_up_to && trace.mode !== "lines") Plotly.restyle(gd, { mode: "lines" }, [index]);
    if (trace.x.length > chart.style.scattergl_threshold && trace.type === "scatter") {
      Plotly.restyle(gd, { type: "scattergl" }, [index]);
    }
  }

  // -------------------------------------------------------- status, progress ---
  const field = (name) => document.querySelector('[data-field="' + name + '"]');
  const progressBar = document.querySelector(".progress-card [data-progress]");
  const cancelButton = document.getElementById("cancel-run");
  const deleteButton = document.getElementById("delete-run");
  let startedAt = run.started_at ? new Date(run.started_at) : null;
  let status = run.status;

  function onProgress(p) {
    const epochs = run.epochs ? " / " + run.epochs : "";
    field("epoch").textContent = TB.number(p.epoch, 4) + epochs;
    field("step").textContent = TB.number(p.step) + (p.total_steps ? " / " + TB.number(p.total_steps) : "");
    field("images_per_s").textContent = p.images_per_s ? TB.number(p.images_per_s, 4) : "–";
    const left = p.total_steps && p.images_per_s && run.batch_size
      ? Math.max(p.total_steps - p.step, 0) * run.batch_size / p.images_per_s : null;
    field("eta").textContent = status === "running" ? TB.duration(left) : "–";
    TB.setProgress(progressBar, TB.progressOf({ status, step: p.step, total_steps: p.total_steps, epoch: p.epoch,
                                                 hyperparameters: { epochs: run.epochs } }));
  }

  function onStatus(s) {
    status = s.status;
    TB.setBadge(document.querySelector(".run-head [data-status-badge]"), s.status, s.cancel_requested);
    if (s.started_at) startedAt = new Date(s.started_at);
    const terminal = TB.TERMINAL.includes(s.status);
    cancelButton.hidden = terminal;
    if (TB.canWrite()) {
      deleteButton.disabled = s.status === "running";
      deleteButton.title = s.status === "running" ? "Cancel the run before deleting it" : "";
    }
    if (terminal) {
      field("eta").textContent = "–";
      if (s.status === "succeeded") TB.setProgress(progressBar, 1);
    }
    document.getElementById("error-card").hidden = !s.error;
    document.getElementById("error-text").textContent = s.error || "";
    field("best_val_acc").textContent = TB.percent((s.best_metrics || {})["val/acc"]);
    renderMetricsTable(s.final_metrics || {}, s.best_metrics || {});
  }

  const METRIC_ORDER = run.metric_order; // app/pages/runs.py's, through the run-data block

  function renderMetricsTable(final, best) {
    const names = new Set(Object.keys(final).concat(Object.keys(best)));
    if (!names.size) return;
    const ordered = METRIC_ORDER.filter((n) => names.has(n))
      .concat(Array.from(names).filter((n) => !METRIC_ORDER.includes(n)).sort());
    const show = (name, v) => (name.endsWith("/acc") ? TB.percent(v) : TB.number(v ?? null));
    const body = document.querySelector("#metrics-table tbody");
    body.replaceChildren(...ordered.map((name) => {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      row.appendChild(th);
      [final[name], best[name]].forEach((value) => {
        const td = document.createElement("td");
        td.className = "num";
        td.textContent = show(name, value);
        row.appendChild(td);
      });
      return row;
    }));
  }

  function onHistoryEvent(e) {
    const list = document.getElementById("history");
    if (list.querySelector('[data-event-id="' + e.id + '"]')) return;
    const item = document.createElement("li");
    item.dataset.eventId = e.id;
    const time = document.createElement("time");
    time.setAttribute("datetime", e.time);
    time.textContent = e.time;
    const kind = document.createElement("span");
    kind.className = "event-kind event-" + e.kind;
    kind.textContent = e.kind;
    const message = document.createElement("span");
    message.className = "event-message";
    message.textContent = e.message;
    item.append(time, " ", kind, " ", message);
    list.appendChild(item);
    TB.localizeTimes(list);
  }

  setInterval(() => {
    if (status === "running" && startedAt) field("elapsed").textContent = TB.duration((Date.now() - startedAt) / 1000);
  }, 1000);

  // ------------------------------------------------------------ live stream ---
  let lastPointId = run.last_point_id;
  let source = null;

  function connect() {
    // ?after= names the last point we have, also after a reconnect (the URL is rebuilt each time).
    source = new EventSource("/api/runs/" + run.id + "/events?after=" + lastPointId);
    const on = (name, handler) => source.addEventListener(name, (e) => handler(JSON.parse(e.data)));
    on("status", onStatus);
    on("progress", onProgress);
    on("event", onHistoryEvent);
    on("metrics", (m) => {
      m.series.forEach(appendFragment);
      lastPointId = m.last_id;
    });
    on("end", () => { source.close(); source = null; });
    source.onerror = () => {
      if (!source) return;
      source.close();
      source = null;
      setTimeout(connect, RECONNECT_MS);
    };
  }

  if (run.live && window.EventSource) connect();
  window.addEventListener("beforeunload", () => source && source.close());

  // ---------------------------------------------------------------- buttons ---
  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    const result = await TB.api("POST", "/api/runs/" + run.id + "/cancel");
    cancelButton.disabled = false;
    if (!result.ok) { TB.showMessage(messages, "error", result.errors); return; }
    onStatus(Object.assign({}, result.data));
    TB.showMessage(messages, "info", result.data.status === "cancelled"
      ? "Cancelled." : "Cancel requested: the worker stops after its current step.", { timeoutMs: 6000 });
  });

  deleteButton.addEventListener("click", async () => {
    const name = document.getElementById("run-name").textContent;
    if (!window.confirm("Delete run #" + run.id + " “" + name + "” with its metrics, history and checkpoint?")) return;
    const result = await TB.api("DELETE", "/api/runs/" + run.id);
    if (result.ok) { window.location.assign("/"); return; }
    TB.showMessage(messages, "error", result.errors);
  });

  // ------------------------------------------------------- name, tags, notes ---
  const form = document.getElementById("details-form");
  const saveStatus = form.querySelector(".save-status");

  function renderTags(tags) {
    const chips = document.getElementById("tag-chips");
    chips.replaceChildren(...tags.map((tag) => {
      const link = document.createElement("a");
      link.className = "tag";
      link.href = "/?tag=" + encodeURIComponent(tag);
      link.textContent = tag;
      return link;
    }));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    TB.clearFieldErrors(form);
    saveStatus.textContent = "Saving…";
    const body = {
      name: form.elements.name.value.trim(),
      tags: form.elements.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
      notes: form.elements.notes.value,
      version: run.version,  // 409 if someone else edited the run since this page loaded
    };
    const result = await TB.api("PATCH", "/api/runs/" + run.id, body);
    saveStatus.textContent = "";
    if (!result.ok) {
      const rest = result.status === 422 ? TB.showFieldErrors(form, result.data.detail) : result.errors;
      if (rest.length) TB.showMessage(messages, "error", rest);
      return;
    }
    run.version = result.data.version;
    document.getElementById("run-name").textContent = result.data.name;
    document.title = result.data.name + " · Trainboard";
    form.elements.tags.value = result.data.tags.join(", ");
    renderTags(result.data.tags);
    saveStatus.textContent = "Saved.";
    setTimeout(() => { saveStatus.textContent = ""; }, 3000);
  });
})();

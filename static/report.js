// /report: draws the embedded figures, launches missing presets, and (on the server's page only)
// loads the showcase run's visualisations from /api/runs/{id}/visualize/*. The downloaded file
// has everything inline, so there this script only draws.
"use strict";

(function () {
  const config = TB.readJsonBlock("report-data") || {};
  const $ = (id) => document.getElementById(id);

  function drawEmbeddedFigures() {
    document.querySelectorAll(".chart[data-figure]").forEach((container) => TBCharts.draw(container));
  }

  // ------------------------------------------------------------ launch ---
  // The study's preset on CIFAR-10 with the preset's own hyperparameters.
  async function launch(button) {
    const messages = $("report-messages");
    button.disabled = true;
    const result = await TB.api("POST", "/api/runs", { model: button.dataset.launch, dataset: { kind: "cifar10" } });
    if (!result.ok) {
      TB.showMessage(messages, "error", result.errors);
      button.disabled = false;
      return;
    }
    const run = result.data;
    const note = document.createElement("p");
    const link = document.createElement("a");
    link.href = "/runs/" + run.id;
    link.textContent = "#" + run.id + " " + run.name;
    note.append("Queued ", link, ". It appears here once it has succeeded.");
    button.replaceWith(note);
  }

  // ------------------------------------------------------------- study ---
  // POST /api/study: the ticked presets × N seeds as one group; the runs list filtered by its tag follows them.
  async function launchStudy(form) {
    const messages = $("study-messages");
    const button = $("study-launch");
    TB.clearMessages(messages);
    TB.clearFieldErrors(form);
    const dataset = { kind: form.elements.kind.value };
    const path = form.elements.path.value.trim();
    if (path) dataset.path = path;
    const presets = Array.from(form.querySelectorAll('input[name="presets"]:checked')).map((box) => box.value);
    const body = { dataset, presets, seeds: Number(form.elements.seeds.value) };
    button.disabled = true;
    const result = await TB.api("POST", "/api/study", body);
    button.disabled = false;
    if (!result.ok) {
      const unmatched = result.status === 422 ? TB.showFieldErrors(form, result.data && result.data.detail) : result.errors;
      if (unmatched.length) TB.showMessage(messages, "error", unmatched);
      return;
    }
    const note = document.createElement("p");
    const link = document.createElement("a");
    link.href = "/?tag=" + encodeURIComponent(result.data.group);
    link.textContent = result.data.count + " runs (" + result.data.group + ")";
    note.append("Queued ", link, ". Their mean ± std appears here as they succeed.");
    messages.replaceChildren(note);
  }

  // ------------------------------------------------- visualisations ---
  // The frames, spinners and image loading are TB's (static/app.js), shared with the visualize page.
  const failFrame = (id, errors) => TB.setFrame(TB.frameOf($(id)), "error", errors.join(" "));

  async function loadActivations(api) {
    const ids = ["report-input", "report-first", "report-last"];
    const failed = (errors) => ids.forEach((id) => failFrame(id, errors));
    const info = await TB.api("GET", api);
    if (!info.ok) { failed(info.errors); return; }
    const className = TB.firstClassWithImages(info.data);
    if (className === null) { failed(["The run's test split has no images."]); return; }
    const query = new URLSearchParams({ class_name: className, index: "0" });
    const result = await TB.api("GET", api + "/activations?" + query);
    if (!result.ok) { failed(result.errors); return; }
    const maps = result.data;
    TB.showFrameImage($("report-input"), maps.input);
    TB.showFrameImage($("report-first"), maps.first.image);
    TB.showFrameImage($("report-last"), maps.last.image);
    $("report-input-caption").textContent = maps.class_name + " #0, predicted " + maps.predicted;
    $("report-first-caption").textContent = maps.first.layer;
    $("report-last-caption").textContent = maps.last.layer;
  }

  async function loadConfusion(api) {
    const result = await TB.api("GET", api + "/confusion");
    ["report-heatmap", "report-per_class_bar"].forEach((id) => {
      if (!result.ok) { failFrame(id, result.errors); return; }
      TB.setFrame(TB.frameOf($(id)), "ready");
      TBCharts.drawFigure($(id), id === "report-heatmap" ? result.data.heatmap : result.data.per_class_bar);
    });
  }

  async function loadVisuals(runId) {
    const api = "/api/runs/" + runId + "/visualize";
    await Promise.all([TB.loadFrameImage($("report-filters"), api + "/filters.png"), loadActivations(api), loadConfusion(api)]);
  }

  async function start() {
    drawEmbeddedFigures();
    document.querySelectorAll("button[data-launch]").forEach((button) => {
      button.addEventListener("click", () => launch(button));
    });
    const studyForm = $("study-form");
    if (studyForm) {
      studyForm.addEventListener("submit", (event) => { event.preventDefault(); launchStudy(studyForm); });
    }
    if (!config.standalone && config.visuals_run_id) await loadVisuals(config.visuals_run_id);
    window.__reportReady = true; // for the browser test
  }

  start();
})();

// The launch form: presets fill in the hyperparameters, the form posts JSON to the REST API
// (POST /api/runs, /api/runs/{id}/clone, or /api/sweeps in sweep mode), and the API's 422 errors
// are shown next to their inputs. The inputs come from ml/config.py's fields (app/pages/launch.py).
"use strict";

(function () {
  const data = TB.readJsonBlock("launch-data");
  const form = document.getElementById("launch-form");
  const formErrors = document.getElementById("form-errors");
  const modelSelect = document.getElementById("f-model");
  const sweepMode = document.getElementById("sweep-mode");
  const sweepCount = document.getElementById("sweep-count");
  const submit = document.getElementById("launch-submit");
  const fields = Array.from(form.querySelectorAll(".field[data-group]"));
  const hyperparameterFields = fields.filter((f) => f.dataset.group === "hyperparameters");

  class FieldError extends Error {}

  // ------------------------------------------------------------ reading ---
  // A number, or the text as typed when it is not one: the API then names the problem at its field.
  function parseNumber(text, kind) {
    const number = Number(text);
    if (text === "" || !isFinite(number)) return text;
    return kind === "int" && !Number.isInteger(number) ? text : number;
  }

  function parseItem(text, kind) {
    if (kind === "bool") return text === "true" ? true : text === "false" ? false : text;
    if (kind === "int" || kind === "float") return parseNumber(text, kind);
    return text;
  }

  const splitList = (text) => text.split(",").map((part) => part.trim()).filter((part) => part !== "");

  function readField(field) {
    const input = field.querySelector("[data-input]");
    const kind = field.dataset.kind, optional = field.dataset.optional === "true";
    if (kind === "bool") return input.checked;
    const text = input.value.trim();
    if (text === "") {
      if (optional) return null;
      if (kind === "int_list") return [];
      if (kind === "json") return {};
      if (kind === "text") return "";
      throw new FieldError("enter a value");
    }
    if (kind === "int" || kind === "float") return parseNumber(text, kind);
    if (kind === "int_list") return splitList(text).map((item) => parseNumber(item, "int"));
    if (kind === "json") {
      try { return JSON.parse(text); } catch (err) { throw new FieldError("not valid JSON: " + err.message); }
    }
    return text;
  }

  const sweepToggle = (field) => field.querySelector("[data-sweep-toggle]");
  const isSwept = (field) => sweepMode.checked && sweepToggle(field) && sweepToggle(field).checked;

  function sweepValues(field) {
    const text = field.querySelector("[data-sweep-input]").value;
    return splitList(text).map((item) => parseItem(item, field.dataset.kind));
  }

  // The request body, and for sweep mode the grid. Client-side problems go next to their fields.
  function buildRequest() {
    const problems = [];
    const body = {
      model: modelSelect.value,
      tags: splitList(document.getElementById("f-tags").value),
      notes: document.getElementById("f-notes").value,
      dataset: {},
      hyperparameters: {},
    };
    const name = document.getElementById("f-name").value.trim();
    if (name) body.name = name;
    const grid = {};
    fields.forEach((field) => {
      const group = field.dataset.group, key = field.dataset.name;
      try {
        if (isSwept(field)) {
          const values = sweepValues(field);
          if (!values.length) throw new FieldError("give one or more values, separated by commas");
          grid[key] = values;
        } else {
          body[group][key] = readField(field);
        }
      } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        problems.push({ loc: [group, key], msg: err.message });
      }
    });
    return { body, grid, problems };
  }

  // ------------------------------------------------------------ presets ---
  function writeField(field, value) {
    const input = field.querySelector("[data-input]");
    const kind = field.dataset.kind;
    if (kind === "bool") { input.checked = Boolean(value); return; }
    if (value === null || value === undefined) input.value = "";
    else if (kind === "int_list") input.value = value.join(", ");
    else if (kind === "json") input.value = Object.keys(value).length ? JSON.stringify(value) : "";
    else input.value = String(value);
  }

  function showCount(counts) {
    document.getElementById("param-count").textContent = TB.number(counts.parameters);
    document.getElementById("param-trainable").textContent = counts.trainable_parameters !== counts.parameters
      ? "(" + TB.number(counts.trainable_parameters) + " trained)" : "";
  }

  function showModel(name) {
    const model = data.models[name];
    if (!model) return;
    showCount(model);
    document.getElementById("model-description").textContent = model.description;
    document.getElementById("preset-name").textContent = name;
    updateOptionsNote();
  }

  function applyPreset(name) {
    const model = data.models[name];
    if (!model) return;
    hyperparameterFields.forEach((field) => writeField(field, model.defaults[field.dataset.name]));
    showModel(name);
    updateSweepCount();
  }

  // Model options (the custom builder's) change the count: ask the server, a moment after typing stops.
  const optionsInput = form.querySelector('[data-loc="hyperparameters.model_options"] [data-input]');
  const paramNote = document.getElementById("param-note");
  let countTimer = null;
  function updateOptionsNote() {
    clearTimeout(countTimer);
    countTimer = setTimeout(countWithOptions, 300);
  }
  async function countWithOptions() {
    const name = modelSelect.value;
    const text = optionsInput ? optionsInput.value.trim() : "";
    paramNote.hidden = true;
    if (!text) { if (data.models[name]) showCount(data.models[name]); return; }
    let options;
    try { options = JSON.parse(text); } catch (_) { return; } // the field's own check reports bad JSON
    const result = await TB.api("POST", "/api/models/" + encodeURIComponent(name) + "/parameters",
                                { model_options: options });
    if (result.ok) { showCount(result.data); return; }
    paramNote.textContent = "model options: " + result.errors.join("; ");
    paramNote.hidden = false;
  }
  if (optionsInput) optionsInput.addEventListener("input", updateOptionsNote);

  modelSelect.addEventListener("change", () => applyPreset(modelSelect.value));

  // ------------------------------------------------------------ sweep mode ---
  function updateSweepCount() {
    const swept = hyperparameterFields.filter(isSwept);
    if (!sweepMode.checked) { sweepCount.hidden = true; return; }
    const runs = swept.reduce((product, field) => product * Math.max(sweepValues(field).length, 0), 1);
    sweepCount.hidden = false;
    sweepCount.classList.toggle("too-many", runs > data.max_sweep_runs);
    if (!swept.length) {
      sweepCount.textContent = "Tick “sweep” next to the hyperparameters to vary, then list their values.";
    } else if (runs > data.max_sweep_runs) {
      sweepCount.textContent = "Would create " + runs + " runs: a sweep has at most " + data.max_sweep_runs + ".";
    } else {
      sweepCount.textContent = "Will create " + runs + " run" + (runs === 1 ? "" : "s") + ".";
    }
    submit.textContent = sweepMode.checked ? "Launch sweep" : data.clone_of ? "Launch clone" : "Launch run";
  }

  function showSweepControls() {
    hyperparameterFields.forEach((field) => {
      const holder = field.querySelector(".sweep-values");
      if (!holder) return;
      holder.hidden = !sweepMode.checked;
      const on = isSwept(field);
      field.querySelector("[data-sweep-input]").hidden = !on;
      field.querySelector("[data-input]").hidden = on;
      field.classList.toggle("swept", on);
    });
    updateSweepCount();
  }

  sweepMode.addEventListener("change", showSweepControls);
  hyperparameterFields.forEach((field) => {
    const toggle = sweepToggle(field);
    if (!toggle) return;
    toggle.addEventListener("change", () => {
      const values = field.querySelector("[data-sweep-input]");
      if (toggle.checked && !values.value) {
        // Start the list from the current value.
        const input = field.querySelector("[data-input]");
        values.value = field.dataset.kind === "bool" ? "true, false" : input.value;
      }
      showSweepControls();
      if (toggle.checked) values.focus();
    });
    field.querySelector("[data-sweep-input]").addEventListener("input", updateSweepCount);
  });

  // ------------------------------------------------------------ submitting ---
  // Where a sweep's error points: ["base", …] is the base request, ["grid", name, i] a value of name.
  function mapSweepLoc(path) {
    if (path[0] === "base") return path.slice(1);
    if (path[0] === "grid" && path.length > 1) return ["hyperparameters", path[1]];
    return path;
  }

  function target(request) {
    if (sweepMode.checked) {
      return { url: "/api/sweeps", body: { base: request.body, grid: request.grid }, mapLoc: mapSweepLoc };
    }
    if (data.clone_of) return { url: "/api/runs/" + data.clone_of + "/clone", body: request.body };
    return { url: "/api/runs", body: request.body };
  }

  function showErrors(result, mapLoc) {
    if (result.status === 422 && result.data && Array.isArray(result.data.detail)) {
      const rest = TB.showFieldErrors(form, result.data.detail, mapLoc);
      if (rest.length) TB.showMessage(formErrors, "error", rest);
      else TB.showMessage(formErrors, "error", "Some values need fixing: see the marked fields.");
    } else {
      TB.showMessage(formErrors, "error", result.errors);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    TB.clearFieldErrors(form);
    TB.clearMessages(formErrors);
    const request = buildRequest();
    if (request.problems.length) {
      showErrors({ status: 422, data: { detail: request.problems } });
      return;
    }
    if (sweepMode.checked && !Object.keys(request.grid).length) {
      TB.showMessage(formErrors, "error", "Sweep mode: tick “sweep” on at least one hyperparameter and list its values.");
      return;
    }
    const { url, body, mapLoc } = target(request);
    submit.disabled = true;
    submit.setAttribute("aria-busy", "true");
    const result = await TB.api("POST", url, body);
    submit.disabled = false;
    submit.removeAttribute("aria-busy");
    if (!result.ok) { showErrors(result, mapLoc); return; }
    if (url === "/api/sweeps") {
      const tag = (result.data.data[0].tags || []).find((t) => t.startsWith("sweep:"));
      window.location.assign(tag ? "/?tag=" + encodeURIComponent(tag) : "/");
    } else {
      window.location.assign("/runs/" + result.data.id);
    }
  });

  // The "full CIFAR-10 is missing" banner: its Download button, then the download's progress.
  const downloadButton = document.getElementById("download-cifar10");
  if (downloadButton) {
    const downloadStatus = document.getElementById("download-status");
    downloadButton.addEventListener("click", async () => {
      downloadButton.disabled = true;
      const started = await TB.api("POST", "/api/datasets/cifar10/download");
      if (!started.ok) {
        downloadStatus.textContent = started.errors.join(" ");
        downloadButton.disabled = false;
        return;
      }
      const poll = async () => {
        const info = await TB.api("GET", "/api/datasets/cifar10");
        if (!info.ok) return;
        downloadStatus.textContent = info.data.status === "ready" ? "CIFAR-10 is ready: pick it above."
          : info.data.message;
        if (info.data.status === "processing") setTimeout(poll, 2000);
        else downloadButton.disabled = info.data.status === "ready";
      };
      poll();
    });
  }

  showModel(modelSelect.value);
  showSweepControls();
})();

// /runs/{id}/visualize: loads the filters, feature maps and confusion matrix from
// /api/runs/{id}/visualize/* after the page has rendered, each behind its own spinner.
"use strict";

(function () {
  const config = TB.readJsonBlock("viz-data");
  if (!config) return; // no checkpoint: the page only shows its message
  const API = config.api;
  const $ = (id) => document.getElementById(id);
  let classes = [];
  let imagesPerClass = [];
  let shown = null; // the feature maps on screen, kept when an upload is refused

  const { setFrame, frameOf } = TB;

  // ----------------------------------------------------------- filters ---
  function loadFilters() {
    return TB.loadFrameImage($("filters-img"), API + "/filters.png");
  }

  // -------------------------------------------------------- the picker ---
  function fillPicker(info) {
    classes = info.classes;
    imagesPerClass = info.test_images_per_class;
    const select = $("pick-class");
    select.replaceChildren(...classes.map((name, i) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name + " (" + imagesPerClass[i] + ")";
      option.disabled = imagesPerClass[i] === 0;
      return option;
    }));
    const first = imagesPerClass.findIndex((n) => n > 0);
    select.selectedIndex = Math.max(first, 0);
    [select, $("pick-index"), $("pick-show"), $("pick-random")].forEach((el) => { el.disabled = first < 0; });
    updateRange();
    $("viz-checkpoint").textContent = "checkpoint of step " + TB.number(info.checkpoint_step) +
      " (epoch " + TB.number(info.checkpoint_epoch, 3) + ")";
    $("map-first-caption").textContent = info.first_layer;
    $("map-last-caption").textContent = info.last_layer;
    $("filters-caption").textContent = "Each tile is one filter of " + info.first_conv +
      ", its three input channels shown as RGB.";
    return first >= 0;
  }

  function updateRange() {
    const count = imagesPerClass[$("pick-class").selectedIndex] || 0;
    const index = $("pick-index");
    index.max = Math.max(count - 1, 0);
    if (Number(index.value) > count - 1) index.value = 0;
    $("pick-range").textContent = count ? "0–" + (count - 1) : "";
  }

  // ------------------------------------------------------ feature maps ---
  function setMaps(state, message) {
    document.querySelectorAll("#maps .viz-frame").forEach((frame) => setFrame(frame, state, message));
    $("maps").dataset.state = state;
  }

  function showActivations(result) {
    TB.showFrameImage($("map-input"), result.input);
    TB.showFrameImage($("map-first"), result.first.image);
    TB.showFrameImage($("map-last"), result.last.image);
    $("map-first-caption").textContent = result.first.layer + " · " + result.first.channels + " × " +
      result.first.height + "×" + result.first.width;
    $("map-last-caption").textContent = result.last.layer + " · " + result.last.channels + " × " +
      result.last.height + "×" + result.last.width;
    $("maps-subject").textContent = result.source === "test"
      ? "· test image " + result.index + " of class " + result.class_name : "· your image";
    shown = result;
    $("prediction").replaceChildren(...result.top.map((score) => {
      const li = document.createElement("li");
      li.textContent = score.name + " " + TB.percent(score.probability, 1);
      if (result.class_name && score.name === result.class_name) li.className = "correct";
      return li;
    }));
    $("maps").dataset.state = "ready";
  }

  async function showTestImage() {
    const className = $("pick-class").value;
    const index = Math.max(0, Math.floor(Number($("pick-index").value) || 0));
    setMaps("loading");
    const query = new URLSearchParams({ class_name: className, index: String(index) });
    const result = await TB.api("GET", API + "/activations?" + query);
    if (!result.ok) { setMaps("error", result.errors.join(" ")); return; }
    showActivations(result.data);
  }

  function showRandom() {
    const count = imagesPerClass[$("pick-class").selectedIndex] || 0;
    $("pick-index").value = Math.floor(Math.random() * count);
    showTestImage();
  }

  // ------------------------------------------------------------ upload ---
  function showUploadError(message) {
    const box = $("upload-error");
    box.textContent = message;
    box.hidden = !message;
  }

  // A file goes as multipart, with the same headers (CSRF included) as every API call.
  async function uploadImage(event) {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (!file) { showUploadError("Choose an image first."); return; }
    showUploadError("");
    setMaps("loading");
    const body = new FormData();
    body.append("file", file);
    const result = await TB.postForm(API + "/activations", body);
    if (!result.ok) {
      const message = result.errors.join(" ");
      showUploadError(message);
      // The refusal is said next to the form; the maps of the last image stay as they were.
      if (shown) showActivations(shown);
      else setMaps("error", "No picture: " + message);
      return;
    }
    showActivations(result.data);
  }

  // --------------------------------------------------- confusion matrix ---
  async function loadConfusion() {
    const frames = [frameOf($("confusion-chart")), frameOf($("per-class-chart"))];
    const result = await TB.api("GET", API + "/confusion");
    if (!result.ok) { frames.forEach((f) => setFrame(f, "error", result.errors.join(" "))); return; }
    frames.forEach((f) => setFrame(f, "ready"));
    TBCharts.drawFigure($("confusion-chart"), result.data.heatmap);
    TBCharts.drawFigure($("per-class-chart"), result.data.per_class_bar);
    $("confusion-summary").textContent = "· " + TB.number(result.data.total) + " test images, " +
      TB.percent(result.data.accuracy) + " correct";
  }

  // -------------------------------------------------------------- start ---
  async function start() {
    $("pick-class").addEventListener("change", updateRange);
    $("pick-form").addEventListener("submit", (event) => { event.preventDefault(); showTestImage(); });
    $("pick-random").addEventListener("click", showRandom);
    $("upload-form").addEventListener("submit", uploadImage);
    loadFilters();
    const confusion = loadConfusion();
    const info = await TB.api("GET", API);
    if (!info.ok) {
      setMaps("error", info.errors.join(" "));
    } else if (fillPicker(info.data)) {
      await showTestImage();
    } else {
      setMaps("error", "The run's test split has no images.");
    }
    await confusion;
    window.__vizReady = true; // for the browser test
  }

  start();
})();

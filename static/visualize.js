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

  // ------------------------------------------------------------ frames ---
  // A .viz-frame shows a spinner (loading), its content (ready) or a message (error).
  function setFrame(frame, state, message) {
    frame.dataset.state = state;
    let note = frame.querySelector(".viz-error");
    if (state === "error") {
      if (!note) {
        note = document.createElement("p");
        note.className = "viz-error";
        frame.appendChild(note);
      }
      note.textContent = message;
    } else if (note) {
      note.remove();
    }
    frame.querySelectorAll("img").forEach((img) => { img.hidden = state !== "ready"; });
  }

  const frameOf = (el) => el.closest(".viz-frame");

  function detailOf(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) return body.detail.map((e) => e.msg).join("; ");
    return "the server answered " + status;
  }

  // Once an <img> has decoded, its frame is ready (so the spinner stays until there is a picture).
  function showImage(img, src) {
    img.onload = () => setFrame(frameOf(img), "ready");
    img.onerror = () => setFrame(frameOf(img), "error", "The image could not be shown.");
    img.src = src;
  }

  // ----------------------------------------------------------- filters ---
  async function loadFilters() {
    const img = $("filters-img");
    let response;
    try {
      response = await fetch(API + "/filters.png", { credentials: "same-origin" });
    } catch (err) {
      setFrame(frameOf(img), "error", "The server could not be reached.");
      return;
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      setFrame(frameOf(img), "error", detailOf(body, response.status));
      return;
    }
    showImage(img, URL.createObjectURL(await response.blob()));
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
    showImage($("map-input"), result.input);
    showImage($("map-first"), result.first.image);
    showImage($("map-last"), result.last.image);
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

  // TB.api sends JSON; a file needs multipart, with the same CSRF header.
  async function uploadImage(event) {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (!file) { showUploadError("Choose an image first."); return; }
    showUploadError("");
    setMaps("loading");
    const body = new FormData();
    body.append("file", file);
    const headers = { Accept: "application/json" };
    const csrf = TB.readCookie("trainboard_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
    let response, data = null;
    try {
      response = await fetch(API + "/activations", { method: "POST", body, headers, credentials: "same-origin" });
      data = await response.json();
    } catch (err) {
      setMaps("error", "The upload failed: " + err.message);
      return;
    }
    if (!response.ok) {
      const message = response.status === 401 ? "Log in to upload images (the server needs its API token)."
        : detailOf(data, response.status);
      showUploadError(message);
      // The refusal is said next to the form; the maps of the last image stay as they were.
      if (shown) showActivations(shown);
      else setMaps("error", "No picture: " + message);
      return;
    }
    showActivations(data);
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

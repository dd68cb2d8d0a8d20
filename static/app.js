// Shared helpers for every page: API calls (with the CSRF header), formatting, messages, local times.
// Plain JS, no build step. Everything hangs off window.TB.
"use strict";

(function () {
  const CSRF_COOKIE = "trainboard_csrf";
  const CSRF_HEADER = "X-CSRF-Token";

  function readCookie(name) {
    const prefix = name + "=";
    const found = document.cookie.split("; ").find((part) => part.startsWith(prefix));
    return found ? decodeURIComponent(found.slice(prefix.length)) : "";
  }

  // One line per error of a FastAPI response body: {"detail": "text"} or {"detail": [{loc, msg}]}.
  function errorLines(body, status) {
    if (body && typeof body.detail === "string") return [body.detail];
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((e) => (e.loc || []).filter((p) => p !== "body").join(".") + ": " + e.msg);
    }
    return ["the server answered " + status];
  }

  // The headers of every API request; a cookie-authenticated mutation needs the CSRF one (app/api/deps.py).
  function apiHeaders() {
    const headers = { Accept: "application/json" };
    const csrf = readCookie(CSRF_COOKIE);
    if (csrf) headers[CSRF_HEADER] = csrf;
    return headers;
  }

  // fetch() that resolves to {ok, status, response, errors}; never throws, not even when offline.
  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
    } catch (err) {
      return { ok: false, status: 0, response: null, errors: ["the server could not be reached (" + err.message + ")"] };
    }
    return { ok: response.ok, status: response.status, response, errors: [] };
  }

  // The error lines of a failed response (its JSON detail, if any), with the login hint on a 401.
  async function failureOf(result) {
    let data = null;
    try { data = await result.response.json(); } catch (_) { data = null; }
    const errors = errorLines(data, result.status);
    if (result.status === 401) errors.unshift("Log in to do this (the server needs its API token).");
    return { ok: false, status: result.status, data, errors };
  }

  // A JSON response as {ok, status, data, errors}.
  async function jsonResult(result) {
    if (!result.response) return Object.assign({ data: null }, result);
    if (!result.ok) return failureOf(result);
    let data = null;
    if (result.status !== 204) {
      try { data = await result.response.json(); } catch (_) { data = null; }
    }
    return { ok: true, status: result.status, data, errors: [] };
  }

  // fetch() for the REST API with a JSON body. Resolves to {ok, status, data, errors}; never throws on HTTP errors.
  async function api(method, url, body) {
    const headers = apiHeaders();
    const options = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return jsonResult(await request(url, options));
  }

  // POST a FormData (multipart: a file upload) with the same headers as api(); same result shape.
  async function postForm(url, formData) {
    return jsonResult(await request(url, { method: "POST", headers: apiHeaders(), body: formData }));
  }

  // GET a binary response (an image) as {ok, status, blob, errors}.
  async function blob(url) {
    const result = await request(url, { headers: apiHeaders() });
    if (!result.response) return Object.assign({ blob: null }, result);
    if (!result.ok) return Object.assign({ blob: null }, await failureOf(result));
    return { ok: true, status: result.status, blob: await result.response.blob(), errors: [] };
  }

  // ---------------------------------------------------- loading frames ---
  // A .viz-frame shows a spinner (loading), its content (ready) or one message (error): a new failure
  // replaces the frame's message rather than adding another.
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

  // Once an <img> has decoded, its frame is ready (so the spinner stays until there is a picture).
  function showFrameImage(img, src) {
    img.onload = () => setFrame(frameOf(img), "ready");
    img.onerror = () => setFrame(frameOf(img), "error", "The image could not be shown.");
    img.src = src;
  }

  // An image from the API into an <img> in a frame; <img src> could not show the API's error message.
  async function loadFrameImage(img, url) {
    const result = await blob(url);
    if (result.ok) showFrameImage(img, URL.createObjectURL(result.blob));
    else setFrame(frameOf(img), "error", result.errors.join(" "));
  }

  // The first class that has test images (the visualisation's default pick), or null when none has.
  function firstClassWithImages(info) {
    const index = info.test_images_per_class.findIndex((n) => n > 0);
    return index < 0 ? null : info.classes[index];
  }

  // ------------------------------------------------------------ formatting ---
  function percent(fraction, digits = 2) {
    return fraction === null || fraction === undefined || !isFinite(fraction)
      ? "–" : (fraction * 100).toFixed(digits) + " %";
  }

  function number(value, digits = 4) {
    if (value === null || value === undefined) return "–";
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return Number(value.toPrecision(digits)).toString();
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) return "–";
    seconds = Math.round(seconds);
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (h >= 24) return Math.floor(h / 24) + " d " + pad(h % 24) + " h";
    if (h) return h + " h " + pad(m) + " min";
    if (m) return m + " min " + pad(s) + " s";
    return s + " s";
  }

  function localTime(iso) {
    const date = new Date(iso);
    if (isNaN(date)) return iso;
    const options = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
    if (date.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
    return date.toLocaleString(undefined, options);
  }

  // Server-rendered UTC times → the viewer's local time (the UTC text stays as a tooltip).
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach((el) => {
      if (el.dataset.localized) return;
      el.title = el.textContent.trim();
      el.textContent = localTime(el.getAttribute("datetime"));
      el.dataset.localized = "1";
    });
  }

  // ------------------------------------------------------------ messages ---
  // A dismissible message in `container` (a live region). Text only: never HTML.
  function showMessage(container, kind, lines, { timeoutMs } = {}) {
    if (!container) return null;
    const box = document.createElement("div");
    box.className = "message message-" + kind;
    const list = Array.isArray(lines) ? lines : [lines];
    list.forEach((line) => {
      const p = document.createElement("p");
      p.textContent = line;
      box.appendChild(p);
    });
    if (list.some((line) => /^Log in/.test(line))) {
      const link = document.createElement("a");
      link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      link.textContent = "Log in";
      box.appendChild(link);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "message-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => box.remove());
    box.appendChild(close);
    container.appendChild(box);
    if (timeoutMs) setTimeout(() => box.remove(), timeoutMs);
    return box;
  }

  function clearMessages(container) {
    if (container) container.replaceChildren();
  }

  // Status badge text and class, as templates/partials/status_badge.html renders them.
  function setBadge(badge, status, cancelRequested) {
    if (!badge) return;
    badge.className = "badge badge-" + status;
    badge.textContent = status === "running" && cancelRequested ? "cancelling" : status;
  }

  function setProgress(bar, fraction) {
    if (!bar) return;
    const known = fraction !== null && fraction !== undefined && isFinite(fraction);
    bar.classList.toggle("progress-unknown", !known);
    const pct = known ? Math.min(Math.max(fraction, 0), 1) * 100 : 0;
    bar.querySelector(".progress-fill").style.width = pct.toFixed(1) + "%";
    if (known) bar.setAttribute("aria-valuenow", pct.toFixed(1));
    else bar.removeAttribute("aria-valuenow");
  }

  // Fraction done, as app/pages/runs.py progress_of computes it.
  function progressOf(run) {
    if (run.status === "succeeded") return 1;
    if (run.total_steps) return run.step / run.total_steps;
    const epochs = run.hyperparameters && run.hyperparameters.epochs;
    return epochs ? run.epoch / epochs : null;
  }

  // ------------------------------------------------------------ field errors ---
  function clearFieldError(field) {
    field.classList.remove("has-error");
    field.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    const slot = field.querySelector("[data-error]");
    if (slot) { slot.hidden = true; slot.textContent = ""; }
  }

  function clearFieldErrors(form) {
    form.querySelectorAll("[data-loc].has-error").forEach(clearFieldError);
  }

  // A field's error goes away as soon as its value is edited.
  document.addEventListener("input", (event) => {
    const field = event.target.closest && event.target.closest("[data-loc].has-error");
    if (field) clearFieldError(field);
  });

  // Show a 422's errors next to their inputs: each error's loc (minus "body", passed through
  // mapLoc) is matched against the fields' data-loc, longest prefix first ("hyperparameters.
  // model_options.filters" lands on "hyperparameters.model_options"). Returns the unmatched lines.
  function showFieldErrors(form, detail, mapLoc) {
    const unmatched = [];
    let first = null;
    (Array.isArray(detail) ? detail : []).forEach((error) => {
      let path = (error.loc || []).filter((part) => part !== "body").map(String);
      if (mapLoc) path = mapLoc(path);
      let field = null;
      for (let n = path.length; n > 0 && !field; n--) {
        field = form.querySelector('[data-loc="' + CSS.escape(path.slice(0, n).join(".")) + '"]');
      }
      if (!field) { unmatched.push(path.join(".") + ": " + error.msg); return; }
      field.classList.add("has-error");
      const slot = field.querySelector("[data-error]");
      if (slot) {
        const extra = path.length ? path.join(".") !== field.dataset.loc ? " (" + path.slice(-1)[0] + ")" : "" : "";
        slot.textContent = slot.hidden ? error.msg + extra : slot.textContent + "; " + error.msg + extra;
        slot.hidden = false;
        const input = field.querySelector("input, select, textarea");
        if (input) {
          input.setAttribute("aria-invalid", "true");
          if (!first) first = input;
        }
      }
    });
    if (first) first.focus();
    return unmatched;
  }

  const canWrite = () => document.body.dataset.canWrite === "true";

  // Controls that change runs are disabled for a read-only visitor (token set, not logged in).
  function disableWritesIfReadOnly(root) {
    if (canWrite()) return;
    (root || document).querySelectorAll("[data-needs-write]").forEach((el) => {
      el.disabled = true;
      el.title = "Log in to change runs";
    });
  }

  function readJsonBlock(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  document.addEventListener("DOMContentLoaded", () => {
    localizeTimes();
    disableWritesIfReadOnly();
    // <select data-autosubmit>: submit its form on change (a <noscript> button covers no-JS).
    document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
      select.addEventListener("change", () => select.form.submit());
    });
  });

  window.TB = {
    api, postForm, blob, errorLines, setFrame, frameOf, showFrameImage, loadFrameImage, firstClassWithImages,
    percent, number, duration, localTime, localizeTimes, showMessage, clearMessages, setBadge,
    setProgress, progressOf, canWrite, clearFieldErrors, showFieldErrors, disableWritesIfReadOnly, readJsonBlock, readCookie,
    TERMINAL: ["succeeded", "failed", "cancelled"],
  };
})();

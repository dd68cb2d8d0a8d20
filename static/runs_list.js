// The runs list: selection and bulk actions (compare, cancel, delete, tag) through the REST API,
// and live rows: while a row is queued or running, its badge, progress and numbers are refreshed
// every few seconds from /api/runs?status=queued,running, without reloading the page.
"use strict";

(function () {
  const POLL_MS = 3000;
  const table = document.querySelector(".runs-table");
  const messages = document.getElementById("list-messages");
  const selectAll = document.getElementById("select-all");
  const countLabel = document.getElementById("selection-count");
  const buttons = {
    compare: document.getElementById("compare-selected"),
    cancel: document.getElementById("cancel-selected"),
    remove: document.getElementById("delete-selected"),
    tag: document.getElementById("tag-selected"),
    tagInput: document.getElementById("bulk-tag"),
  };

  const rowOf = (id) => table.querySelector('tr[data-run-id="' + id + '"]');
  const boxes = () => Array.from(table.querySelectorAll(".row-select"));
  const selectedIds = () => boxes().filter((box) => box.checked).map((box) => Number(box.value));

  // ------------------------------------------------------------- selection ---
  function updateSelection() {
    const ids = selectedIds(), all = boxes();
    countLabel.textContent = ids.length
      ? ids.length + " selected"
      : "Select runs to compare, cancel, delete or tag them.";
    selectAll.checked = all.length > 0 && ids.length === all.length;
    selectAll.indeterminate = ids.length > 0 && ids.length < all.length;
    buttons.compare.disabled = ids.length === 0;
    const writable = TB.canWrite() && ids.length > 0;
    [buttons.cancel, buttons.remove, buttons.tag, buttons.tagInput].forEach((el) => { el.disabled = !writable; });
    table.querySelectorAll("tbody tr[data-run-id]").forEach((row) => {
      row.classList.toggle("selected", row.querySelector(".row-select").checked);
    });
  }

  selectAll.addEventListener("change", () => {
    boxes().forEach((box) => { box.checked = selectAll.checked; });
    updateSelection();
  });
  table.addEventListener("change", (event) => {
    if (event.target.classList.contains("row-select")) updateSelection();
  });

  // Shift-click selects the range from the last clicked box.
  let lastClicked = null;
  table.addEventListener("click", (event) => {
    const box = event.target.closest(".row-select");
    if (!box) return;
    if (event.shiftKey && lastClicked) {
      const all = boxes(), a = all.indexOf(lastClicked), b = all.indexOf(box);
      all.slice(Math.min(a, b), Math.max(a, b) + 1).forEach((other) => { other.checked = box.checked; });
      updateSelection();
    }
    lastClicked = box;
  });

  // --------------------------------------------------------------- actions ---
  buttons.compare.addEventListener("click", () => {
    window.location.assign("/compare?ids=" + selectedIds().join(","));
  });

  // Run `call(id)` for each selected run; report the failures per run, then refresh the rows.
  async function forEachSelected(verb, call) {
    TB.clearMessages(messages);
    const ids = selectedIds();
    const results = await Promise.all(ids.map(async (id) => ({ id, result: await call(id) })));
    const failed = results.filter((r) => !r.result.ok);
    const done = results.length - failed.length;
    if (done) TB.showMessage(messages, "info", verb + " " + done + " run" + (done === 1 ? "" : "s") + ".", { timeoutMs: 6000 });
    if (failed.length) {
      TB.showMessage(messages, "error", failed.map((f) => "Run #" + f.id + ": " + f.result.errors.join("; ")));
    }
    return results;
  }

  buttons.cancel.addEventListener("click", async () => {
    const results = await forEachSelected("Cancelled", (id) => TB.api("POST", "/api/runs/" + id + "/cancel"));
    results.filter((r) => r.result.ok).forEach((r) => updateRow(r.result.data));
    startPolling();
  });

  buttons.remove.addEventListener("click", async () => {
    const ids = selectedIds();
    const what = ids.length === 1 ? "run #" + ids[0] : ids.length + " runs";
    if (!window.confirm("Delete " + what + " with their metrics, history and checkpoints? This cannot be undone.")) return;
    const results = await forEachSelected("Deleted", (id) => TB.api("DELETE", "/api/runs/" + id));
    results.filter((r) => r.result.ok).forEach((r) => {
      const row = rowOf(r.id);
      if (row) row.remove();
    });
    updateSelection();
  });

  document.getElementById("tag-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const tag = buttons.tagInput.value.trim();
    if (!tag) { buttons.tagInput.focus(); return; }
    const results = await forEachSelected("Tagged", async (id) => {
      const current = await TB.api("GET", "/api/runs/" + id);
      if (!current.ok) return current;
      if (current.data.tags.includes(tag)) return current;
      return TB.api("PATCH", "/api/runs/" + id, { tags: current.data.tags.concat([tag]) });
    });
    results.filter((r) => r.result.ok).forEach((r) => renderTags(rowOf(r.id), r.result.data.tags));
    buttons.tagInput.value = "";
  });

  function renderTags(row, tags) {
    if (!row) return;
    const cell = row.querySelector(".col-name");
    let holder = cell.querySelector(".tags");
    if (!holder) {
      holder = document.createElement("div");
      holder.className = "tags";
      cell.appendChild(holder);
    }
    holder.replaceChildren(...tags.map((tag) => {
      const link = document.createElement("a");
      link.className = "tag";
      const params = new URLSearchParams(window.location.search);
      params.set("tag", tag);
      params.delete("page");
      link.href = "/?" + params.toString();
      link.textContent = tag;
      return link;
    }));
  }

  // ------------------------------------------------------------ live rows ---
  function elapsed(run) {
    if (run.duration_s !== null && run.duration_s !== undefined) return run.duration_s;
    if (run.status === "running" && run.started_at) return (Date.now() - new Date(run.started_at)) / 1000;
    return null;
  }

  function updateRow(run) {
    const row = rowOf(run.id);
    if (!row) return;
    row.dataset.status = run.status;
    TB.setBadge(row.querySelector("[data-status-badge]"), run.status, run.cancel_requested);
    const bar = row.querySelector("[data-progress]");
    if (TB.TERMINAL.includes(run.status)) {
      if (bar) bar.remove();
    } else if (bar) {
      TB.setProgress(bar, TB.progressOf(run));
    }
    row.querySelector('[data-cell="best_val_acc"]').textContent = TB.percent(run.best_metrics["val/acc"]);
    row.querySelector('[data-cell="test_acc"]').textContent = TB.percent(run.final_metrics["test/acc"]);
    row.querySelector('[data-cell="duration"]').textContent = TB.duration(elapsed(run));
  }

  function liveIds() {
    return Array.from(table.querySelectorAll("tbody tr[data-run-id]"))
      .filter((row) => !TB.TERMINAL.includes(row.dataset.status) && row.dataset.status !== "gone")
      .map((row) => Number(row.dataset.runId));
  }

  async function refreshLiveRows() {
    const ids = liveIds();
    if (!ids.length) return false;
    const live = await TB.api("GET", "/api/runs?status=queued,running&limit=500");
    if (!live.ok) return true; // try again at the next tick
    const byId = new Map(live.data.data.map((run) => [run.id, run]));
    await Promise.all(ids.map(async (id) => {
      if (byId.has(id)) { updateRow(byId.get(id)); return; }
      // No longer queued or running: it finished (or was deleted) since the last poll.
      const one = await TB.api("GET", "/api/runs/" + id);
      if (one.ok) updateRow(one.data);
      else if (one.status === 404 && rowOf(id)) {
        rowOf(id).classList.add("gone"); // deleted elsewhere
        rowOf(id).dataset.status = "gone";
      }
    }));
    return liveIds().length > 0;
  }

  let timer = null;
  function startPolling() {
    if (timer || !liveIds().length) return;
    timer = setInterval(async () => {
      if (document.hidden) return; // no polling from background tabs
      if (!(await refreshLiveRows())) { clearInterval(timer); timer = null; }
    }, POLL_MS);
  }

  updateSelection();
  startPolling();
})();

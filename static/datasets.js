// The datasets page: upload (with progress), processing progress, delete, class-balance charts.
(function () {
  "use strict";
  document.querySelectorAll("[data-figure]").forEach((el) => TBCharts.draw(el));

  const form = document.getElementById("upload-form");
  const messages = document.getElementById("upload-messages");
  const bar = document.getElementById("upload-progress");
  const submit = document.getElementById("upload-submit");

  let uploading = false;

  // Whether a reload would lose nothing: no upload in flight, nothing typed or chosen in the form.
  function formIsIdle() {
    return !uploading && !document.getElementById("upload-name").value &&
      document.getElementById("upload-file").files.length === 0;
  }

  // Reload while any dataset is still being processed, so its progress and final state show;
  // but never under a user filling the form or uploading (a reload would abort the upload).
  if (document.querySelector('[data-status="processing"]')) {
    setInterval(() => { if (formIsIdle()) window.location.reload(); }, 1500);
  }

  function csrfHeader(xhr) {
    const match = document.cookie.match(/(?:^|; )trainboard_csrf=([^;]*)/);
    if (match) xhr.setRequestHeader("X-CSRF-Token", decodeURIComponent(match[1]));
  }

  function upload(name, file) {
    // XMLHttpRequest rather than fetch(): it reports upload progress. The archive is the raw body.
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/datasets?name=" + encodeURIComponent(name));
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      csrfHeader(xhr);
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) bar.value = event.loaded / event.total;
      });
      xhr.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (_) { data = null; }
        resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, data });
      });
      xhr.addEventListener("error", () => resolve({ ok: false, status: 0, data: null }));
      xhr.send(file);
    });
  }

  function errorText(result) {
    if (!result.data) return "the upload failed (HTTP " + result.status + ")";
    const detail = result.data.detail;
    if (Array.isArray(detail)) return detail.map((d) => (d.loc || []).slice(-1)[0] + ": " + d.msg).join("; ");
    return String(detail);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    TB.clearMessages(messages);
    const name = document.getElementById("upload-name").value.trim();
    const file = document.getElementById("upload-file").files[0];
    if (!name || !file) {
      TB.showMessage(messages, "error", "Give a name and choose an archive.");
      return;
    }
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    uploading = true;
    const result = await upload(name, file);
    uploading = false;
    submit.disabled = false;
    if (!result.ok) {
      bar.hidden = true;
      TB.showMessage(messages, "error", errorText(result));
      return;
    }
    TB.showMessage(messages, "info", "Uploaded; checking the images…");
    form.reset();  // an emptied form lets the processing page keep reloading itself
    window.location.reload();
  });

  document.querySelectorAll("[data-delete]").forEach((button) => {
    button.addEventListener("click", async () => {
      const name = button.dataset.delete;
      if (!window.confirm("Delete dataset " + name + "? Its files are removed.")) return;
      const result = await TB.api("DELETE", "/api/datasets/" + encodeURIComponent(name));
      if (result.ok) window.location.reload();
      else TB.showMessage(messages, "error", result.errors);
    });
  });
})();

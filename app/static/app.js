/* NVC web page: upload a volume or an .nvc file, follow the job, download the result.
 *
 * Plain JavaScript, no build step. Talks to the API this page is served by (same origin):
 *   POST /compress?profile=…  |  POST /decompress?format=…   (multipart field "file")
 *   GET  /jobs/{id}?wait=…    (long-poll)                      GET /jobs/{id}/result
 * Errors are RFC 9457 problem+json; their "detail" is shown as is. Uploads use
 * XMLHttpRequest because fetch() cannot report upload progress. Each submission carries an
 * Idempotency-Key, so a retry after a 503/429 or a dropped connection never makes two jobs.
 * The ids of jobs started here are kept in localStorage ("recent jobs of this browser").
 * DICOM: a .zip/.tar/.dcm is sent as it is; a dropped or chosen folder (or several files) is
 * sent as many "file" parts with their relative paths, a DICOM file first (the API keeps them
 * as one series upload); a DICOM archive's result is a zip of the original files.
 */
"use strict";

(function () {
  const RECENT_KEY = "nvc.recentJobs";
  const RECENT_MAX = 20;
  const API_KEY_KEY = "nvc.apiKey";
  const COMPRESS_RE = /\.(nii|nii\.gz|npy|zip|tar|dcm)$/i;
  const DECOMPRESS_RE = /\.nvc$/i;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("submit-form"), file: $("file"), folder: $("folder"), drop: $("drop-zone"), choice: $("file-choice"),
    profile: $("profile"), format: $("format"), profileField: $("profile-field"), formatField: $("format-field"),
    apiKey: $("api-key"), start: $("start"), error: $("error"), progress: $("progress"),
    upload: $("upload-progress"), uploadText: $("upload-text"), job: $("job-progress"), jobText: $("job-text"),
    status: $("status"), result: $("result"), download: $("download"), recent: $("recent"),
    recentEmpty: $("recent-empty"), clearRecent: $("clear-recent"),
  };

  let chosen = null; // the File to send, or a bundle {name, size, entries: [{file, path}]} of DICOM files
  let busy = false;

  // ---------------------------------------------------------------- helpers
  function mb(bytes) {
    if (bytes == null) return "?";
    if (bytes < 1e3) return `${bytes} B`;
    if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
    return `${(bytes / 1e6).toFixed(2)} MB`;
  }

  function kindOf(name) {
    if (DECOMPRESS_RE.test(name)) return "decompress";
    if (COMPRESS_RE.test(name)) return "compress";
    return null;
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function authHeaders() {
    const key = el.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Dates as ISO 8601 in UTC (2026-12-01T19:58:12Z): unambiguous in every locale.
  function isoTime(value) {
    if (!value) return "";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? "" : date.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  class ApiError extends Error {
    constructor(message, status, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  function problemMessage(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      if (body && body.title) return body.title;
    } catch (_) { /* not JSON */ }
    return `the server answered HTTP ${status}`;
  }

  function retryable(err) {
    return err.status === 0 || err.status === 429 || err.status === 502 || err.status === 503 || err.status === 504;
  }

  function backoff(attempt, err) {
    if (err.retryAfter != null && !Number.isNaN(err.retryAfter)) return Math.min(err.retryAfter, 60) * 1000;
    return Math.min(500 * 2 ** (attempt - 1), 8000);
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) } });
    } catch (_) {
      throw new ApiError("could not reach the server (network error)", 0);
    }
    const text = await response.text();
    if (!response.ok) {
      throw new ApiError(problemMessage(response.status, text), response.status, parseFloat(response.headers.get("Retry-After")));
    }
    return text ? JSON.parse(text) : null;
  }

  // ---------------------------------------------------------------- errors and status
  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // ---------------------------------------------------------------- choosing a file
  function isBundle(x) {
    return Boolean(x && Array.isArray(x.entries));
  }

  async function isDicomFile(file) {
    if (file.size < 132) return false;
    return (await file.slice(128, 132).text()) === "DICM";
  }

  // Files of a dropped folder (webkitGetAsEntry), with their paths relative to the drop.
  async function droppedEntries(items) {
    const out = [];
    async function walk(entry, prefix) {
      if (entry.isFile) {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        out.push({ file, path: prefix + entry.name });
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          if (!batch.length) break;
          for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
        }
      }
    }
    const roots = Array.from(items).map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    for (const root of roots) await walk(root, "");
    return out;
  }

  // A DICOM series upload: a DICOM file goes first (the API takes several parts only then).
  async function makeBundle(entries, name) {
    let first = -1;
    for (let i = 0; i < Math.min(entries.length, 64); i++) {
      if (await isDicomFile(entries[i].file)) { first = i; break; }
    }
    if (first < 0) {
      showError(`${name}: no DICOM file found (a DICOM file starts with a 128-byte preamble and "DICM").`);
      return null;
    }
    if (first > 0) entries.unshift(entries.splice(first, 1)[0]);
    return { name, size: entries.reduce((sum, e) => sum + e.file.size, 0), entries };
  }

  function chooseBundle(bundle) {
    clearError();
    chosen = bundle;
    el.choice.textContent = `${bundle.name}: ${bundle.entries.length} files (${mb(bundle.size)}) will be archived as DICOM series (.nvc).`;
    el.profileField.classList.toggle("inactive", false);
    el.formatField.classList.toggle("inactive", true);
    el.start.disabled = busy;
  }

  function choose(file) {
    clearError();
    chosen = null;
    el.start.disabled = true;
    if (!file) {
      el.choice.textContent = "";
      return;
    }
    const kind = kindOf(file.name);
    if (!kind) {
      el.choice.textContent = "";
      showError(`${file.name} is not a .nii, .nii.gz, .npy, .nvc, .dcm, .zip or .tar file.`);
      return;
    }
    chosen = file;
    el.choice.textContent = `${file.name} (${mb(file.size)}) will be ${kind === "compress" ? "compressed to .nvc" : "decompressed"}.`;
    el.profileField.classList.toggle("inactive", kind !== "compress");
    el.formatField.classList.toggle("inactive", kind !== "decompress");
    el.start.disabled = busy;
  }

  el.file.addEventListener("change", () => choose(el.file.files[0] || null));
  if (el.folder) {
    el.folder.addEventListener("change", async () => {
      const files = Array.from(el.folder.files || []);
      if (!files.length) return;
      const entries = files.map((file) => ({ file, path: file.webkitRelativePath || file.name }));
      const top = entries[0].path.split("/")[0] || "series";
      const bundle = await makeBundle(entries, top);
      if (bundle) chooseBundle(bundle);
    });
  }

  ["dragenter", "dragover"].forEach((type) =>
    el.drop.addEventListener(type, (event) => {
      event.preventDefault();
      el.drop.classList.add("over");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    el.drop.addEventListener(type, (event) => {
      event.preventDefault();
      el.drop.classList.remove("over");
    })
  );
  el.drop.addEventListener("drop", async (event) => {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    const items = event.dataTransfer.items;
    const entries0 = items ? Array.from(items).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()) : [];
    if (files.length > 1 || entries0.some((e) => e && e.isDirectory)) {
      const entries = items && entries0.some(Boolean) ? await droppedEntries(items)
        : Array.from(files).map((file) => ({ file, path: file.name }));
      const top = entries0.length === 1 && entries0[0] && entries0[0].isDirectory ? entries0[0].name : "series";
      const bundle = await makeBundle(entries, top);
      if (bundle) chooseBundle(bundle);
      return;
    }
    try {
      el.file.files = files; // keeps the input in step where the browser allows it
    } catch (_) { /* read-only in some browsers */ }
    choose(files[0]);
  });

  // ---------------------------------------------------------------- upload
  function uploadOnce(url, file, key) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("Idempotency-Key", key);
      xhr.setRequestHeader("Accept", "application/json");
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => {
        if (!event.lengthComputable) return;
        el.upload.value = event.loaded / event.total;
        el.uploadText.textContent = `${mb(event.loaded)} / ${mb(event.total)}`;
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve(JSON.parse(xhr.responseText));
          } catch (_) {
            reject(new ApiError("the server's answer was not JSON", xhr.status));
          }
        } else {
          reject(new ApiError(problemMessage(xhr.status, xhr.responseText), xhr.status,
            parseFloat(xhr.getResponseHeader("Retry-After"))));
        }
      };
      xhr.onerror = () => reject(new ApiError("the upload failed (network error)", 0));
      xhr.ontimeout = () => reject(new ApiError("the upload timed out", 0));
      const form = new FormData();
      if (isBundle(file)) {
        for (const entry of file.entries) form.append("file", entry.file, entry.path);
      } else {
        form.append("file", file, file.name);
      }
      xhr.send(form);
    });
  }

  // A DICOM series archive is .nvc format version 2: it restores to a zip of its files.
  async function isDicomArchive(file) {
    if (file.size < 12) return false;
    const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    return head[0] === 0x89 && head[1] === 0x4e && head[8] === 2 && head[9] === 0;
  }

  async function submit(file) {
    const kind = isBundle(file) ? "compress" : kindOf(file.name);
    const params = new URLSearchParams();
    if (kind === "compress" && el.profile.value) params.set("profile", el.profile.value);
    if (kind === "decompress" && !(await isDicomArchive(file))) params.set("format", el.format.value);
    const url = `/${kind}${params.toString() ? "?" + params : ""}`;
    const key = newKey(); // the same for every attempt: a retry returns the same job
    for (let attempt = 1; ; attempt++) {
      try {
        return await uploadOnce(url, file, key);
      } catch (err) {
        if (!retryable(err) || attempt >= 4) throw err;
        const wait = backoff(attempt, err);
        setStatus(`${err.message}; retrying in ${(wait / 1000).toFixed(0)} s…`);
        await sleep(wait);
      }
    }
  }

  // ---------------------------------------------------------------- job
  async function follow(job) {
    let failures = 0;
    while (!TERMINAL.has(job.state)) {
      showJob(job);
      try {
        job = await api(`/jobs/${job.id}?wait=1`);
        failures = 0;
      } catch (err) {
        if (!retryable(err) || ++failures > 5) throw err;
        setStatus(`${err.message}; trying again…`);
        await sleep(backoff(failures, err));
      }
      remember(job);
    }
    showJob(job);
    return job;
  }

  function showJob(job) {
    el.job.value = job.progress || 0;
    el.jobText.textContent = `${Math.round((job.progress || 0) * 100)} %`;
    const words = {
      queued: "Queued: waiting for a worker…",
      running: "Running…",
      succeeded: "Done.",
      failed: `Failed: ${job.error || "no reason given"}`,
      cancelled: "Cancelled.",
    };
    setStatus(words[job.state] || job.state);
  }

  // One meaning of "ratio" everywhere: the server's `ratio` is raw voxel bytes / .nvc bytes
  // (as `nvc info` reports it); `upload_ratio` is the uploaded file / .nvc.
  function ratioText(job) {
    if (job.ratio == null) return "—";
    let text = `${job.ratio.toFixed(2)} : 1 vs the raw voxels`;
    if (job.upload_ratio != null) text += `, ${job.upload_ratio.toFixed(2)} : 1 vs the upload`;
    return text;
  }

  function resultUrl(job) {
    return `/jobs/${encodeURIComponent(job.id)}/result`;
  }

  function showResult(job) {
    $("result-name").textContent = job.output_name || "";
    $("result-sizes").textContent = `${mb(job.input_size)} in → ${mb(job.output_size)} out`;
    $("result-ratio").textContent = ratioText(job);
    $("result-bpv").textContent = job.bits_per_voxel != null ? job.bits_per_voxel.toFixed(3) : "—";
    $("result-sha").textContent = job.output_sha256 || "";
    const dicom = $("result-dicom");
    if (dicom) {
      // only what identifies the series: modality, description, counts and dimensions
      dicom.textContent = job.series ? `${job.files} files: ${job.instances_coded} instances coded by NVC, ` +
        `${job.files_verbatim} stored verbatim. Series: ` + job.series.map((s) =>
          `${s.modality || "?"}${s.description ? " " + s.description : ""} (${s.instances} instances` +
          `${s.volumes.length ? "; " + s.volumes.map((v) => v.join("×")).join(", ") : ""})`).join("; ") : "";
      dicom.hidden = !job.series;
    }
    el.download.href = resultUrl(job);
    el.download.setAttribute("download", job.output_name || "");
    el.download.textContent = `Download ${job.output_name || "the result"}`;
    el.download.dataset.jobId = job.id;
    el.result.hidden = false;
    if (window.NVCViewer) {
      if (job.kind === "compress" && job.shape) window.NVCViewer.show(job, authHeaders);
      else window.NVCViewer.hide();
    }
    el.download.focus();
  }

  // With an API key a plain link cannot authenticate: fetch the result and save the blob.
  async function downloadWithKey(event) {
    if (!el.apiKey.value.trim()) return; // plain link
    const link = event.currentTarget;
    event.preventDefault();
    try {
      const response = await fetch(link.href, { headers: authHeaders() });
      if (!response.ok) throw new ApiError(problemMessage(response.status, await response.text()), response.status);
      const url = URL.createObjectURL(await response.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = link.getAttribute("download") || "result";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      showError(`Download failed: ${err.message}`);
    }
  }
  el.download.addEventListener("click", downloadWithKey);

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chosen || busy) return;
    busy = true;
    el.start.disabled = true;
    clearError();
    el.result.hidden = true;
    if (window.NVCViewer) window.NVCViewer.hide();
    el.progress.hidden = false;
    el.upload.value = 0;
    el.job.value = 0;
    el.uploadText.textContent = "";
    el.jobText.textContent = "";
    const file = chosen;
    setStatus(`Uploading ${file.name}…`);
    try {
      let job = await submit(file);
      el.upload.value = 1;
      remember(job);
      job = await follow(job);
      if (job.state === "succeeded") {
        showResult(job);
      } else {
        showError(job.state === "failed" ? `The job failed: ${job.error || "no reason given"}` : "The job was cancelled.");
      }
    } catch (err) {
      showError(err.message ? err.message.charAt(0).toUpperCase() + err.message.slice(1) : String(err));
      setStatus("");
    } finally {
      busy = false;
      el.start.disabled = !chosen;
      renderRecent();
    }
  });

  // ---------------------------------------------------------------- recent jobs
  function loadRecent() {
    try {
      const list = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
      return Array.isArray(list) ? list : [];
    } catch (_) {
      return [];
    }
  }

  function saveRecent(list) {
    try {
      localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
    } catch (_) { /* storage full or disabled: the list is a convenience */ }
  }

  function summary(job) {
    return {
      id: job.id, kind: job.kind, state: job.state, input_name: job.input_name, output_name: job.output_name,
      input_size: job.input_size, output_size: job.output_size, bits_per_voxel: job.bits_per_voxel,
      shape: job.shape, dtype: job.dtype, created_at: job.created_at,
    };
  }

  function remember(job) {
    const list = loadRecent().filter((item) => item.id !== job.id);
    const old = loadRecent().find((item) => item.id === job.id);
    list.unshift({ ...(old || {}), ...summary(job) });
    saveRecent(list);
    renderRecent();
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function renderRecent() {
    const list = loadRecent();
    const body = el.recent.querySelector("tbody");
    body.textContent = "";
    el.recent.hidden = list.length === 0;
    el.recentEmpty.hidden = list.length !== 0;
    el.clearRecent.hidden = list.length === 0;
    for (const job of list) {
      const row = document.createElement("tr");
      row.dataset.jobId = job.id;
      cell(row, job.input_name || job.id);
      cell(row, job.kind || "");
      cell(row, job.state || "");
      cell(row, job.state === "succeeded" && job.ratio != null ? `${job.ratio.toFixed(2)}×` : "");
      cell(row, job.bits_per_voxel != null ? job.bits_per_voxel.toFixed(3) : "");
      cell(row, isoTime(job.created_at));
      const last = cell(row, "");
      if (job.state === "succeeded") {
        const a = document.createElement("a");
        a.href = resultUrl(job);
        a.setAttribute("download", job.output_name || "");
        a.textContent = "Download";
        a.setAttribute("aria-label", `Download ${job.output_name || "result"} of ${job.input_name || job.id}`);
        a.addEventListener("click", downloadWithKey);
        last.appendChild(a);
      }
      body.appendChild(row);
    }
  }

  // Refresh the states of jobs that were not final when this browser last saw them.
  async function refreshRecent() {
    for (const item of loadRecent()) {
      if (item.state === "expired" || (TERMINAL.has(item.state) && item.output_size != null)) continue;
      try {
        remember(await api(`/jobs/${item.id}`));
      } catch (err) {
        if (err.status === 404) {
          const list = loadRecent().map((j) => (j.id === item.id ? { ...j, state: "expired" } : j));
          saveRecent(list);
          renderRecent();
        }
      }
    }
  }

  el.clearRecent.addEventListener("click", () => {
    saveRecent([]);
    renderRecent();
    el.file.focus();
  });

  // ---------------------------------------------------------------- API key (this tab only)
  try {
    el.apiKey.value = sessionStorage.getItem(API_KEY_KEY) || "";
    el.apiKey.addEventListener("change", () => sessionStorage.setItem(API_KEY_KEY, el.apiKey.value.trim()));
  } catch (_) { /* storage disabled */ }

  renderRecent();
  refreshRecent();
})();

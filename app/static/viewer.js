/* NVC web page: the finished compress job, looked at.
 *
 * - a slice viewer: GET /jobs/{id}/slices/{z}?window=… answers a PNG (the server decodes only
 *   the slab holding the slice and keeps it, so neighbouring slices come fast). Slider, arrow
 *   keys / Page Up / Page Down / Home / End on the slider, or the mouse wheel over the image;
 *   window presets; the caption gives the slice number and its distance from the first slice
 *   in mm (X-Slice-Position-Mm). Only the latest wanted slice is fetched: moving the slider
 *   quickly does not queue a request per step.
 * - the plain statement that the file was verified lossless, with the SHA-256s on demand;
 * - the sizes as a bar chart: upload, .nvc and the raw voxels.
 * Images are fetched with fetch() (so an API key can be sent) and shown from blob: URLs.
 * app.js calls NVCViewer.show(job, headers) when a compress job has succeeded.
 */
"use strict";

(function () {
  const WINDOW_WORDS = {
    auto: "automatic (0.5–99.5th percentile)", lung: "CT lung", soft_tissue: "CT soft tissue",
    bone: "CT bone", brain: "CT brain",
  };
  const $ = (id) => document.getElementById(id);
  const el = {
    section: $("viewer"), image: $("slice-image"), slider: $("slice"), window: $("window"),
    caption: $("slice-caption"), state: $("slice-state"), verified: $("verified"), hashes: $("hashes"),
    sizes: $("sizes"), volume: $("volume"), volumeField: $("volume-field"), series: $("series-info"),
  };
  if (!el.section) return;

  let job = null;
  let headers = () => ({});
  let shownUrl = null;
  let inFlight = false;
  let wanted = null; // {z, window, volume} the user asked for last
  let shown = null; // {z, window, volume} on screen

  function mb(bytes) {
    if (bytes == null) return "?";
    if (bytes < 1e3) return `${bytes} B`;
    if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
    return `${(bytes / 1e6).toFixed(2)} MB`;
  }

  function isoTime(value) {
    if (!value) return "";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? "" : date.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function depthOf(j) {
    return j.shape && j.shape.length >= 3 ? j.shape[2] : 1;
  }

  function problemText(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.detail) return body.detail;
    } catch (_) { /* not JSON */ }
    return `the server answered HTTP ${status}`;
  }

  // ---------------------------------------------------------------- slices
  function request(z) {
    wanted = { z, window: el.window.value, volume: Number(el.volume.value || 0) };
    pump();
  }

  const same = (a, b) => a && b && a.z === b.z && a.window === b.window && a.volume === b.volume;

  // A DICOM archive (or a 4-D series) holds several volumes: offer them once the server says so.
  function showVolumes(count) {
    if (count <= 1 || el.volume.options.length === count) {
      el.volumeField.hidden = count <= 1;
      return;
    }
    el.volume.textContent = "";
    for (let i = 0; i < count; i++) {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = `${i + 1} of ${count}`;
      el.volume.appendChild(option);
    }
    el.volumeField.hidden = false;
  }

  function showSeries(response) {
    const modality = response.headers.get("X-Series-Modality");
    if (modality == null) {
      el.series.hidden = true;
      return;
    }
    const description = decodeURIComponent(response.headers.get("X-Series-Description") || "");
    el.series.textContent = `DICOM series: ${decodeURIComponent(modality)}${description ? ` · ${description}` : ""}`;
    el.series.hidden = false;
  }

  async function pump() {
    if (inFlight || !job || !wanted) return;
    if (same(shown, wanted)) return;
    const want = wanted;
    const forJob = job.id;
    inFlight = true;
    const slow = setTimeout(() => { el.state.textContent = "Decoding the slab that holds this slice…"; }, 300);
    try {
      const params = new URLSearchParams({ window: want.window });
      if (want.volume) params.set("volume", String(want.volume));
      const response = await fetch(`/jobs/${encodeURIComponent(forJob)}/slices/${want.z}?${params}`, { headers: headers() });
      if (!response.ok) throw new Error(problemText(response.status, await response.text()));
      const blob = await response.blob();
      if (!job || job.id !== forJob) return; // another job was shown meanwhile
      const url = URL.createObjectURL(blob);
      await new Promise((resolve, reject) => {
        el.image.onload = resolve;
        el.image.onerror = () => reject(new Error("the slice image could not be shown"));
        el.image.src = url;
      });
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = url;
      shown = want;
      const count = response.headers.get("X-Slice-Count") || String(depthOf(job));
      if (Number(count) - 1 !== Number(el.slider.max)) { // DICOM jobs: the depth is known from the server
        el.slider.max = String(Number(count) - 1);
        el.slider.disabled = Number(count) <= 1;
      }
      showVolumes(Number(response.headers.get("X-Volume-Count") || 1));
      showSeries(response);
      const position = response.headers.get("X-Slice-Position-Mm");
      const center = response.headers.get("X-Window-Center");
      const width = response.headers.get("X-Window-Width");
      const where = position != null ? `, ${Number(position).toFixed(1)} mm from the first slice` : "";
      const words = `Slice ${want.z + 1} of ${count}${where}`;
      el.image.alt = `${words} of ${job.input_name || "the volume"}, window ${WINDOW_WORDS[want.window] || want.window}`;
      el.image.dataset.z = String(want.z);
      el.image.dataset.window = want.window;
      el.image.dataset.volume = String(want.volume);
      el.caption.textContent = `${words} · window ${WINDOW_WORDS[want.window] || want.window}` +
        (center != null ? ` (center ${center}, width ${width})` : "");
      el.state.textContent = "";
    } catch (err) {
      el.state.textContent = `Could not show slice ${want.z + 1}: ${err.message}`;
      shown = want; // do not retry the same failing request in a loop
    } finally {
      clearTimeout(slow);
      inFlight = false;
      if (job && job.id === forJob) pump(); // the user may have moved on meanwhile
    }
  }

  el.slider.addEventListener("input", () => request(Number(el.slider.value)));
  el.window.addEventListener("change", () => request(Number(el.slider.value)));
  el.volume.addEventListener("change", () => {
    el.slider.value = "0";
    request(0);
  });
  el.image.addEventListener("wheel", (event) => {
    if (!job) return;
    event.preventDefault();
    const step = event.deltaY > 0 ? 1 : -1;
    const z = Math.min(Number(el.slider.max), Math.max(0, Number(el.slider.value) + step));
    if (String(z) !== el.slider.value) {
      el.slider.value = String(z);
      request(z);
    }
  }, { passive: false });

  // ---------------------------------------------------------------- verification and sizes
  function showVerified(j) {
    const took = j.verify_seconds != null ? ` (the check took ${j.verify_seconds.toFixed(1)} s)` : "";
    const what = j.series && j.series.length
      ? "restored every file of the upload from it, byte for byte" // a DICOM study: files, not only voxels
      : "its voxels matched the uploaded volume's exactly";
    el.verified.textContent = "Verified lossless: before this job succeeded, the server decoded the new .nvc file " +
      `and ${what}${took}. Finished ${isoTime(j.finished_at)}.`;
    el.hashes.textContent = "";
    const rows = [["SHA-256 of the voxels", j.voxel_sha256], ["SHA-256 of the .nvc file", j.output_sha256],
      ["SHA-256 of the upload", j.input_sha256]];
    for (const [label, value] of rows) {
      if (!value) continue;
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.className = "mono";
      dd.textContent = value;
      el.hashes.append(dt, dd);
    }
  }

  function showSizes(j) {
    const raw = j.raw_bytes;  // the server's: shape x bytes per voxel
    const bars = [["Upload", j.input_size], [".nvc", j.output_size], ["Raw voxels", raw]].filter(([, v]) => v);
    const most = Math.max(...bars.map(([, v]) => v));
    el.sizes.textContent = "";
    for (const [label, value] of bars) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "size-name";
      name.textContent = label;
      const track = document.createElement("span");
      track.className = "size-track";
      track.setAttribute("aria-hidden", "true");
      const bar = document.createElement("span");
      bar.className = `size-bar${label === ".nvc" ? " nvc" : ""}`;
      bar.style.width = `${Math.max(0.5, (100 * value) / most)}%`;
      track.appendChild(bar);
      const text = document.createElement("span");
      text.className = "num";
      text.textContent = mb(value);
      li.append(name, track, text);
      el.sizes.appendChild(li);
    }
  }

  // ---------------------------------------------------------------- entry points
  function show(j, authHeaders) {
    job = j;
    headers = authHeaders || (() => ({}));
    shown = null;
    const depth = depthOf(j);
    el.slider.min = "0";
    el.slider.max = String(Math.max(0, depth - 1));
    el.slider.value = String(Math.floor(depth / 2));
    el.slider.disabled = depth <= 1;
    el.volume.textContent = "";
    el.volumeField.hidden = true;
    el.series.hidden = true;
    el.caption.textContent = "";
    el.state.textContent = "";
    showVerified(j);
    showSizes(j);
    el.section.hidden = false;
    request(Number(el.slider.value));
  }

  function hide() {
    job = null;
    wanted = null;
    shown = null;
    el.section.hidden = true;
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = null;
    el.image.removeAttribute("src");
  }

  window.NVCViewer = { show, hide, isoTime };
})();

// unetkit web page: pick a model, drop images, see image | mask | overlay, counts and downloads.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Talks to the API of this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { models: [], auth: false };

function apiKey() { return $("#api-key").value || localStorage.getItem("unetkit-api-key") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.auth && apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return response;
}

function decode(payload) {
  const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
  const array = payload.dtype === "uint16" ? new Uint16Array(bytes.buffer) : bytes;
  return { array, shape: payload.shape };
}

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// ---------------------------------------------------------------- models
async function loadModels() {
  const status = $("#server-status");
  try {
    const health = await (await fetch("/health")).json();
    state.auth = health.auth;
    $("#key-field").hidden = !state.auth;
    if (state.auth && !apiKey()) {
      status.textContent = "enter the API key";
      return;
    }
    const body = await (await api("/models")).json();
    state.models = body.models;
    state.limits = body.limits;
    const select = $("#model");
    select.innerHTML = "";
    for (const m of state.models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = `${m.name} · ${m.arch} ${m.dims}D`;
      select.appendChild(opt);
    }
    select.disabled = false;
    showModelInfo();
    status.className = "status ok";
    status.textContent = `${state.models.length} model(s) · v${health.version}`;
  } catch (err) {
    status.className = "status bad";
    status.textContent = err.message;
  }
}

function currentModel() { return state.models.find((m) => m.name === $("#model").value); }

function showModelInfo() {
  const m = currentModel();
  if (!m) return;
  const classes = m.classes.filter((c) => c.id > 0).map((c) => c.name).join(", ");
  const norm = m.normalisation ? m.normalisation.mode : "none";
  $("#model-info").innerHTML =
    `${m.dims}D · ${m.in_channels} channel(s) · classes: ${escapeHtml(classes)} · normalisation: ${escapeHtml(norm)}` +
    ` · window ${m.roi_size.join("×")} · <code title="sha256 of ${escapeHtml(m.file)}">${m.sha256.slice(0, 12)}</code>`;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---------------------------------------------------------------- uploads
function queryString() {
  const q = new URLSearchParams({ model: $("#model").value, preview: "true" });
  if ($("#opt-measure").checked) q.set("measure", "true");
  if ($("#opt-split").checked) q.set("split", "true");
  if ($("#opt-tta").checked) q.set("tta", "true");
  const t = $("#opt-threshold").value;
  if (t) q.set("threshold", t);
  return q.toString();
}

function handleFiles(files) {
  if (!currentModel()) { loadModels(); return; }
  for (const file of files) predictFile(file);
}

async function predictFile(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $("#results").prepend(card);
  $(".file-name", card).textContent = file.name;
  $(".file-meta", card).textContent = `${formatBytes(file.size)} · ${$("#model").value}`;
  if (state.limits && file.size > state.limits.max_upload) {
    return fail(card, 413, `${file.name}: ${file.size.toLocaleString()} bytes is over this server's limit of ` +
      `${state.limits.max_upload.toLocaleString()} bytes`);
  }
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const job = await (await api(`/jobs?${queryString()}`, { method: "POST", body: form })).json();
    card.dataset.job = job.id;
    let info = job;
    while (info.status === "queued" || info.status === "running") {
      $(".bar", card).style.width = `${Math.max(3, 100 * info.progress)}%`;
      await new Promise((r) => setTimeout(r, 250));
      info = await (await api(`/jobs/${job.id}`)).json();
    }
    if (info.status === "failed") return fail(card, info.error.status, info.error.message);
    show(card, info.result);
  } catch (err) {
    fail(card, err.status, err.message);
  }
}

function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fail(card, status, message) {
  card.classList.add("failed");
  const box = $(".message", card);
  box.hidden = false;
  box.innerHTML = `<strong>${status ? "Error " + status : "Error"}</strong>${escapeHtml(message)}`;
  card.dataset.state = "failed";
}

// ---------------------------------------------------------------- results
function show(card, result) {
  card.classList.add("done");
  $(".body", card).hidden = false;
  const mask = decode(result.mask);
  const image = decode(result.preview);
  const is3d = result.dims === 3;
  const [depth, height, width] = is3d ? mask.shape : [1, ...mask.shape];
  const channels = image.shape[image.shape.length - 1];
  const colors = {};
  for (const c of result.classes) colors[c.id] = hexToRgb(c.color);
  const view = { card, result, mask, image, depth, height, width, channels, colors, z: Math.floor(depth / 2) };
  $(".file-meta", card).textContent =
    `${is3d ? depth + " × " : ""}${height} × ${width} · ${result.model}` + (result.spacing ? ` · spacing ${result.spacing.map((s) => +s.toFixed(3)).join(" × ")}` : "");
  for (const cls of ["view-image", "view-mask", "view-overlay"]) {
    const canvas = $("." + cls, card);
    canvas.width = width;
    canvas.height = height;
  }
  if (is3d) {
    // start on the slice with the most foreground
    let best = -1;
    for (let z = 0; z < depth; z++) {
      let n = 0;
      for (let i = z * height * width; i < (z + 1) * height * width; i++) if (mask.array[i]) n++;
      if (n > best) { best = n; view.z = z; }
    }
    const slider = $(".slice", card);
    $(".slice-control", card).hidden = false;
    slider.max = depth - 1;
    slider.value = view.z;
    slider.addEventListener("input", () => { view.z = +slider.value; draw(view); });
  }
  const opacity = $(".opacity", card);
  opacity.addEventListener("input", () => draw(view));
  legend(view);
  if (result.counts) {
    $(".count-box", card).hidden = false;
    $(".count-total", card).textContent = result.counts.total;
    table(card, result.objects);
  }
  downloads(view);
  draw(view);
  card.dataset.state = "done";
}

function draw(view) {
  const { card, mask, image, height, width, channels, colors } = view;
  const alpha = $(".opacity", card).value / 100;
  $(".opacity-value", card).textContent = `${Math.round(alpha * 100)}%`;
  if (view.depth > 1) $(".slice-value", card).textContent = `${view.z + 1} / ${view.depth}`;
  const n = height * width;
  const offset = view.z * n;
  const imgData = new ImageData(width, height);
  const maskData = new ImageData(width, height);
  const overData = new ImageData(width, height);
  for (let i = 0; i < n; i++) {
    const p = (offset + i) * channels;
    const r = image.array[p], g = channels > 1 ? image.array[p + 1] : r, b = channels > 1 ? image.array[p + 2] : r;
    const label = mask.array[offset + i];
    const c = label ? (colors[label] || [255, 255, 255]) : [0, 0, 0];
    const q = 4 * i;
    imgData.data[q] = r; imgData.data[q + 1] = g; imgData.data[q + 2] = b; imgData.data[q + 3] = 255;
    maskData.data[q] = c[0]; maskData.data[q + 1] = c[1]; maskData.data[q + 2] = c[2]; maskData.data[q + 3] = 255;
    const a = label ? alpha : 0;
    overData.data[q] = (1 - a) * r + a * c[0];
    overData.data[q + 1] = (1 - a) * g + a * c[1];
    overData.data[q + 2] = (1 - a) * b + a * c[2];
    overData.data[q + 3] = 255;
  }
  $(".view-image", card).getContext("2d").putImageData(imgData, 0, 0);
  $(".view-mask", card).getContext("2d").putImageData(maskData, 0, 0);
  const overlay = $(".view-overlay", card);
  overlay.getContext("2d").putImageData(overData, 0, 0);
  overlay.dataset.ready = "true";
}

function legend(view) {
  const counts = view.result.counts || {};
  const box = $(".legend", view.card);
  box.innerHTML = "";
  for (const c of view.result.classes) {
    if (c.id === 0) continue;
    const span = document.createElement("span");
    const n = counts[c.name];
    span.innerHTML = `<i style="background:${c.color}"></i>${escapeHtml(c.name)}` + (n !== undefined ? ` <b>${n}</b>` : "");
    box.appendChild(span);
  }
}

const COLUMNS = ["id", "class_name", "pixels", "area", "volume", "perimeter", "equivalent_diameter",
  "centroid_z", "centroid_y", "centroid_x"];

function table(card, objects) {
  if (!objects) return;
  $(".table-box", card).hidden = false;
  $("summary", card).textContent = `Object table (${objects.length})`;
  const cols = COLUMNS.filter((c) => objects.length && c in objects[0]);
  $("thead", card).innerHTML = "<tr>" + cols.map((c) => `<th>${c.replace(/_/g, " ")}</th>`).join("") + "</tr>";
  const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : escapeHtml(v));
  $("tbody", card).innerHTML = objects.map((o) => "<tr>" + cols.map((c) => `<td>${fmt(o[c])}</td>`).join("") + "</tr>").join("");
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function stem(name) { return name.replace(/\.nii\.gz$/i, "").replace(/\.[^.]+$/, ""); }

function downloads(view) {
  const { card, result } = view;
  $(".dl-mask", card).addEventListener("click", async () => {
    try {
      const response = await api(`/jobs/${card.dataset.job}?format=mask`);
      const disposition = response.headers.get("content-disposition") || "";
      const match = /filename="([^"]+)"/.exec(disposition);
      save(await response.blob(), match ? match[1] : `${stem(result.image)}_mask`);
    } catch (err) {
      fail(card, err.status, err.status === 404 ? "this result is no longer kept on the server; run it again" : err.message);
    }
  });
  if (result.objects_csv !== undefined) {
    const button = $(".dl-csv", card);
    button.hidden = false;
    button.addEventListener("click", () => save(new Blob([result.objects_csv], { type: "text/csv" }), `${stem(result.image)}_objects.csv`));
  }
  $(".dl-overlay", card).addEventListener("click", () => {
    $(".view-overlay", card).toBlob((blob) => save(blob, `${stem(result.image)}_overlay${view.depth > 1 ? "_z" + view.z : ""}.png`), "image/png");
  });
}

// ---------------------------------------------------------------- wiring
function init() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); handleFiles(e.dataTransfer.files); });
  $("#model").addEventListener("change", showModelInfo);
  $("#api-key").addEventListener("change", () => { localStorage.setItem("unetkit-api-key", $("#api-key").value); loadModels(); });
  loadModels();
}

init();

// SVG playground: plain browser JavaScript, no build step, no third-party code. Talks to this server only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, lastPng: null, metrics: null };

// The API key lives in this tab only (sessionStorage is cleared when the tab closes; never localStorage/cookies).
function apiKey() { return sessionStorage.getItem("svg-api-key") || ""; }
function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

function status(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function errorText(body) {
  if (!body) return "request failed";
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return (body.error || "error") + (body.detail ? ": " + body.detail : "");
}

function intOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

// POST with Accept: text/event-stream and read the events (WHATWG format) from the streamed body.
async function streamRequest(path, body, onEvent) {
  const isForm = body instanceof FormData;
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (!isForm) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: "POST", headers, body: isForm ? body : JSON.stringify(body) });
  if (!response.ok) {  // refused before the stream (401, 413, ...): a plain JSON error
    let err = null;
    try { err = await response.json(); } catch (e) { /* not JSON */ }
    throw new Error(errorText(err) + " (HTTP " + response.status + ")");
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let final = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;  // heartbeat comment
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (!data.length) continue;
      const payload = JSON.parse(data.join("\n"));
      onEvent(event, payload);
      if (event === "result") final = payload;
      if (event === "error") throw new Error(errorText(payload) + " (HTTP " + payload.status + ")");
    }
  }
  if (!final) throw new Error("the stream ended without a result");
  return final;
}

function progressHandler(barId, statusId) {
  const bar = $(barId);
  bar.value = 0;
  return (event, data) => {
    if (event === "queued") status(statusId, "queued, position " + data.position);
    else if (event === "started") { bar.max = data.total; status(statusId, "started"); }
    else if (event === "progress") {
      bar.max = data.total;
      bar.value = data.step;
      status(statusId, "step " + data.step + "/" + data.total + (data.eta_s != null ? ", ETA " + data.eta_s.toFixed(1) + " s" : ""));
    }
  };
}

const pngUrl = (b64) => "data:image/png;base64," + b64;

async function loadModel() {
  const r = await fetch("/models", { headers: authHeaders() });
  if (!r.ok) { status("model-info", "GET /models: HTTP " + r.status + (r.status === 401 ? " (enter the API key)" : ""), true); return; }
  const m = await r.json();
  state.model = m;
  $("model-info").textContent = (m.preset || "model") + ", " + m.image_size + " px, " + m.num_classes + " classes" +
    (m.random_weights ? " (random weights)" : "");
  for (const select of document.querySelectorAll(".class-picker")) {
    select.textContent = "";
    for (let i = 0; i < m.num_classes; i++) {
      const opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = m.labels ? i + ": " + m.labels[i] : String(i);
      select.appendChild(opt);
    }
  }
  for (const id of ["gen-steps", "edit-steps", "interp-steps"]) $(id).max = m.max_steps;
  $("interp-n").max = m.max_images;
}

// -- generate ---------------------------------------------------------------------------------------------------
async function generate(ev) {
  ev.preventDefault();
  $("gen-go").disabled = true;
  try {
    const body = { class_id: Number($("gen-class").value), steps: Number($("gen-steps").value),
                   cfg: Number($("gen-cfg").value), sampler: $("gen-sampler").value };
    const seed = intOrNull("gen-seed");
    if (seed !== null) body.seed = seed;
    const result = await streamRequest("/generate", body, progressHandler("gen-progress", "gen-status"));
    const image = result.images[0];
    state.lastPng = image.png_base64;
    $("gen-image").src = pngUrl(image.png_base64);
    $("gen-seed-out").textContent = "seed " + result.seed + " (enter it to replay), NFE " + result.nfe;
    status("gen-status", "done in " + result.timings.total_s.toFixed(2) + " s");
  } catch (e) {
    status("gen-status", e.message, true);
  } finally {
    $("gen-go").disabled = false;
  }
}

// -- edit: the mask is drawn on a canvas over the image (pointer events: mouse, pen and touch) ---------------------
const edit = { image: null, imageBlob: null, mask: document.createElement("canvas"), drawing: false };

function loadEditImage(blob) {
  const img = new Image();
  img.onload = () => {
    edit.image = img;
    edit.imageBlob = blob;
    // The mask has the image's aspect ratio (the server scales it with the image), at most 256 px on a side.
    const scale = 256 / Math.max(img.naturalWidth, img.naturalHeight);
    edit.mask.width = Math.max(1, Math.round(img.naturalWidth * scale));
    edit.mask.height = Math.max(1, Math.round(img.naturalHeight * scale));
    clearMask();
  };
  img.src = URL.createObjectURL(blob);
}

function clearMask() {
  const m = edit.mask.getContext("2d");
  m.fillStyle = "#000";
  m.fillRect(0, 0, edit.mask.width, edit.mask.height);
  redrawEdit();
}

function redrawEdit() {
  const canvas = $("edit-canvas");
  canvas.width = edit.mask.width || 256;
  canvas.height = edit.mask.height || 256;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (edit.image) ctx.drawImage(edit.image, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 0.45;
  ctx.globalCompositeOperation = "lighter";
  ctx.drawImage(edit.mask, 0, 0);  // white strokes on black: "lighter" leaves the image where the mask is black
  ctx.globalAlpha = 1;
  ctx.globalCompositeOperation = "source-over";
}

function maskPoint(ev) {
  const canvas = $("edit-canvas");
  const rect = canvas.getBoundingClientRect();
  return [(ev.clientX - rect.left) * canvas.width / rect.width, (ev.clientY - rect.top) * canvas.height / rect.height];
}

function paint(ev) {
  if (!edit.drawing || !edit.image) return;
  const [x, y] = maskPoint(ev);
  const m = edit.mask.getContext("2d");
  m.fillStyle = "#fff";
  m.beginPath();
  m.arc(x, y, Number($("edit-brush").value), 0, 2 * Math.PI);
  m.fill();
  redrawEdit();
}

function setupMaskCanvas() {
  const canvas = $("edit-canvas");
  canvas.addEventListener("pointerdown", (ev) => { edit.drawing = true; canvas.setPointerCapture(ev.pointerId); paint(ev); });
  canvas.addEventListener("pointermove", paint);
  for (const name of ["pointerup", "pointercancel", "pointerleave"]) canvas.addEventListener(name, () => { edit.drawing = false; });
}

const canvasBlob = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
// Decoded here rather than fetch()ed from a data: URL, which the page's own CSP (connect-src 'self') forbids.
const b64Blob = async (b64) => new Blob([Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0))], { type: "image/png" });

async function runEdit(ev) {
  ev.preventDefault();
  if (!edit.imageBlob) { status("edit-status", "choose an image first", true); return; }
  $("edit-go").disabled = true;
  try {
    const form = new FormData();
    form.append("image", edit.imageBlob, "image.png");
    form.append("mask", await canvasBlob(edit.mask), "mask.png");
    form.append("class_id", $("edit-class").value);
    form.append("region", $("edit-region").value);
    form.append("strength", $("edit-strength").value);
    form.append("steps", $("edit-steps").value);
    const seed = intOrNull("edit-seed");
    if (seed !== null) form.append("seed", String(seed));
    const result = await streamRequest("/edit", form, progressHandler("edit-progress", "edit-status"));
    $("edit-result").src = pngUrl(result.images[0].png_base64);
    status("edit-status", "done, seed " + result.seed);
  } catch (e) {
    status("edit-status", e.message, true);
  } finally {
    $("edit-go").disabled = false;
  }
}

// -- interpolate: lerp strip above slerp strip ------------------------------------------------------------------
async function interpolate(ev) {
  ev.preventDefault();
  $("interp-go").disabled = true;
  try {
    const base = { class_id: Number($("interp-class").value), seed_a: Number($("interp-a").value),
                   seed_b: Number($("interp-b").value), num_points: Number($("interp-n").value),
                   steps: Number($("interp-steps").value) };
    for (const mode of ["lerp", "slerp"]) {
      status("interp-status", mode + "…");
      const result = await streamRequest("/interpolate", { ...base, mode }, (event, data) => {
        if (event === "progress") status("interp-status", mode + ": step " + data.step + "/" + data.total);
      });
      const strip = $("strip-" + mode);
      strip.textContent = "";
      for (const im of result.images) {
        const img = document.createElement("img");
        img.src = pngUrl(im.png_base64);
        img.alt = mode + " t=" + im.t;
        img.title = "t = " + im.t;
        strip.appendChild(img);
      }
    }
    status("interp-status", "done");
  } catch (e) {
    status("interp-status", e.message, true);
  } finally {
    $("interp-go").disabled = false;
  }
}

// -- encode: features (C, h, w) -> first 3 principal components over the h*w positions -> RGB ------------------
function topComponents(x, n, c, k) {
  // x: n rows of c features (centred). Power iteration with deflation on the c x c covariance.
  const cov = new Float64Array(c * c);
  for (let i = 0; i < n; i++) {
    const row = x[i];
    for (let a = 0; a < c; a++) { const va = row[a]; for (let b = 0; b < c; b++) cov[a * c + b] += va * row[b]; }
  }
  const comps = [];
  for (let j = 0; j < k; j++) {
    let v = new Float64Array(c).map((_, i) => Math.sin(i * 12.9898 + j * 78.233) + 1e-3);
    let lambda = 0;
    for (let it = 0; it < 100; it++) {
      const w = new Float64Array(c);
      for (let a = 0; a < c; a++) { let s = 0; for (let b = 0; b < c; b++) s += cov[a * c + b] * v[b]; w[a] = s; }
      const norm = Math.hypot(...w) || 1;
      lambda = norm;
      v = w.map((t) => t / norm);
    }
    comps.push(v);
    for (let a = 0; a < c; a++) for (let b = 0; b < c; b++) cov[a * c + b] -= lambda * v[a] * v[b];
  }
  return comps;
}

async function encodeImage(blob) {
  $("encode-input").src = URL.createObjectURL(blob);
  status("encode-status", "encoding…");
  try {
    const form = new FormData();
    form.append("image", blob, "image.png");
    form.append("format", "json");
    const r = await fetch("/encode", { method: "POST", headers: authHeaders({ Accept: "application/json" }), body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(errorText(body) + " (HTTP " + r.status + ")");
    const [c, h, w] = body.shape;
    const n = h * w;
    const mean = new Float64Array(c);
    const rows = [];
    for (let p = 0; p < n; p++) {
      const row = new Float64Array(c);
      for (let ch = 0; ch < c; ch++) { row[ch] = body.features[ch][Math.floor(p / w)][p % w]; mean[ch] += row[ch] / n; }
      rows.push(row);
    }
    for (const row of rows) for (let ch = 0; ch < c; ch++) row[ch] -= mean[ch];
    const comps = topComponents(rows, n, c, 3);
    const proj = rows.map((row) => comps.map((v) => row.reduce((s, t, i) => s + t * v[i], 0)));
    const canvas = $("encode-pca");
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let k = 0; k < 3; k++) {
      const vals = proj.map((p) => p[k]);
      const lo = Math.min(...vals), hi = Math.max(...vals);
      for (let p = 0; p < n; p++) img.data[p * 4 + k] = Math.round(255 * (vals[p] - lo) / ((hi - lo) || 1));
    }
    for (let p = 0; p < n; p++) img.data[p * 4 + 3] = 255;
    ctx.putImageData(img, 0, 0);
    status("encode-status", "features " + c + " x " + h + " x " + w);
  } catch (e) {
    status("encode-status", e.message, true);
  }
}

// -- live server panel from /metrics ----------------------------------------------------------------------------
function metricSum(text, name) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) total += Number(line.split(" ").pop());
  }
  return total;
}

async function pollMetrics() {
  try {
    const r = await fetch("/metrics");
    if (!r.ok) return;
    const text = await r.text();
    const now = performance.now() / 1000;
    const cur = { t: now, images: metricSum(text, "svg_images_total"), rows: metricSum(text, "svg_step_rows_sum"),
                  steps: metricSum(text, "svg_step_rows_count") };
    $("stat-queue").textContent = String(metricSum(text, "svg_queue_depth"));
    const prev = state.metrics;
    if (prev) {
      const dSteps = cur.steps - prev.steps;
      $("stat-rows").textContent = dSteps > 0 ? ((cur.rows - prev.rows) / dSteps).toFixed(1) : "0";
      $("stat-ips").textContent = ((cur.images - prev.images) / (cur.t - prev.t)).toFixed(2);
    }
    state.metrics = cur;
  } catch (e) { /* server away: keep the last numbers */ }
}

function init() {
  const key = $("api-key");
  key.value = apiKey();
  key.addEventListener("change", () => { sessionStorage.setItem("svg-api-key", key.value); loadModel(); });
  $("gen-form").addEventListener("submit", generate);
  $("edit-form").addEventListener("submit", runEdit);
  $("interp-form").addEventListener("submit", interpolate);
  $("edit-upload").addEventListener("change", (ev) => { if (ev.target.files[0]) loadEditImage(ev.target.files[0]); });
  $("edit-use-last").addEventListener("click", async () => { if (state.lastPng) loadEditImage(await b64Blob(state.lastPng)); });
  $("edit-clear").addEventListener("click", clearMask);
  $("encode-upload").addEventListener("change", (ev) => { if (ev.target.files[0]) encodeImage(ev.target.files[0]); });
  $("encode-use-last").addEventListener("click", async () => { if (state.lastPng) encodeImage(await b64Blob(state.lastPng)); });
  setupMaskCanvas();
  redrawEdit();
  loadModel();
  pollMetrics();
  setInterval(pollMetrics, 2000);
}

init();

// The page of `upscaler serve`: upload and compare images, download them (one or a zip), run batch jobs.
// Talks only to its own server, through the /v1 API (see pipeline/serve).
import { makeZip, uniqueNames } from "./zip.js";

const KEY_STORAGE = "upscaler.apiKey";
const PARALLEL_UPLOADS = 2; // a CPU server upscales one or two images at a time; more only fills its queue
const JOB_POLL_MS = 1500;
const SHOWN_SCALES = [2, 4, 8];
const PRESETS = ["photo", "anime"];
const LIVE_JOB_STATES = new Set(["queued", "running", "cancelling"]);

const $ = (id) => document.getElementById(id);

// `upscaler serve` without --keys prints the page's address with a key for this session in the
// fragment (#key=...), which browsers never send to the server: keep it, then drop it from the address bar.
function keyFromAddress() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (key) {
    localStorage.setItem(KEY_STORAGE, key);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return key;
}

const state = {
  key: keyFromAddress() || localStorage.getItem(KEY_STORAGE) || "",
  permissions: [],
  limits: { maxUploadBytes: null },
  items: [], // one per uploaded file, in the order shown
  running: 0,
  selected: null, // the item shown in the compare view
  jobsTimer: null,
};

// ---- talking to the server --------------------------------------------------------------------

function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

class KeyRejected extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    askForKey(`The key was not accepted: ${await errorMessage(response)}`);
    throw new KeyRejected("API key not accepted");
  }
  return response;
}

// The server's errors are {"error": "<one line>"}; anything else is shown by its status.
function parseError(text, status) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch { /* not JSON */ }
  const line = (text || "").trim().split("\n")[0].slice(0, 200);
  return line ? `HTTP ${status}: ${line}` : `HTTP ${status}`;
}

async function errorMessage(response) {
  return parseError(await response.text().catch(() => ""), response.status);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Retry-After is seconds or an HTTP date; wait at least 1 s, at most a minute.
function retryAfterSeconds(value) {
  let seconds = Number(value);
  if (!Number.isFinite(seconds)) {
    const date = Date.parse(value || "");
    seconds = Number.isNaN(date) ? 2 : (date - Date.now()) / 1000;
  }
  return Math.min(60, Math.max(1, Math.ceil(seconds)));
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GB`;
}

// ---- start-up: key, identity, models ----------------------------------------------------------

function askForKey(message) {
  stopJobPolling();
  $("app").hidden = true;
  $("identity").hidden = true;
  $("key-panel").hidden = false;
  $("key-error").textContent = message || "";
  $("server-status").textContent = "Waiting for an API key";
  document.body.dataset.ready = "key";
  $("key-input").focus();
}

function showFatal(message) {
  $("fatal").textContent = message;
  $("fatal").hidden = false;
  $("server-status").textContent = "Not connected";
  document.body.dataset.ready = "error";
}

async function connect() {
  $("fatal").hidden = true;
  let response;
  try {
    response = await fetch("/v1/whoami", { headers: authHeaders() });
  } catch (error) {
    showFatal(`Cannot reach the server (${error.message}). Reload the page to try again.`);
    return;
  }
  if (response.status === 401) {
    const reason = await errorMessage(response);
    askForKey(state.key ? `That key was not accepted: ${reason}` : "");
    return;
  }
  if (!response.ok) {
    showFatal(`The server refused the page: ${await errorMessage(response)}`);
    return;
  }
  const who = await response.json();
  state.permissions = who.permissions || [];
  $("identity").hidden = !who.auth;
  $("identity-name").textContent = who.name;

  let info;
  try {
    const modelsResponse = await api("/v1/models");
    if (!modelsResponse.ok) throw new Error(await errorMessage(modelsResponse));
    info = await modelsResponse.json();
    renderModelChoices(info);
  } catch (error) {
    if (!(error instanceof KeyRejected)) showFatal(`Cannot list the models: ${error.message}`);
    return;
  }
  // whoami names the key's permissions; /v1/models says whether this server runs jobs at all (--allow-prefix)
  const canRunJobs = state.permissions.includes("jobs") && info.jobs !== false;
  $("tab-jobs").hidden = !canRunJobs;
  if (!canRunJobs) selectTab("upscale");
  $("key-panel").hidden = true;
  $("app").hidden = false;
  document.body.dataset.ready = "true";
  document.body.dataset.permissions = state.permissions.join(" ");
  watchReadiness();
}

async function watchReadiness() {
  const status = $("server-status");
  for (;;) {
    try {
      const response = await fetch("/readyz");
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        status.textContent = body.model ? `Ready · ${body.model}` : "Ready";
        status.dataset.ready = "true";
        return;
      }
      status.textContent = "Loading the model…";
    } catch {
      status.textContent = "Server unreachable, retrying…";
    }
    status.dataset.ready = "false";
    await sleep(2000);
  }
}

function radio(name, value, label, checked) {
  const id = `${name}-${value}`;
  const input = Object.assign(document.createElement("input"), { type: "radio", name, value, id, checked });
  const labelElement = Object.assign(document.createElement("label"), { htmlFor: id, textContent: label });
  return [input, labelElement];
}

function option(value, text, { disabled = false, title = "" } = {}) {
  const element = Object.assign(document.createElement("option"), { value, textContent: text, disabled });
  if (title) element.title = title;
  return element;
}

function shorten(text, length) {
  return text.length <= length ? text : `${text.slice(0, length - 1).trimEnd()}…`;
}

function renderModelChoices(info) {
  const scales = (info.scales || SHOWN_SCALES).filter((s) => SHOWN_SCALES.includes(s));
  const shownScales = scales.length ? scales : SHOWN_SCALES;
  const defaultScale = shownScales.includes(4) ? 4 : shownScales[0];
  const scaleChoice = $("scale-choice");
  scaleChoice.querySelectorAll("input, label").forEach((element) => element.remove());
  for (const scale of shownScales) scaleChoice.append(...radio("scale", String(scale), `${scale}×`, scale === defaultScale));

  const jobScale = $("job-scale");
  jobScale.replaceChildren(...(info.scales || SHOWN_SCALES).map((s) => option(String(s), `${s}×`)));
  jobScale.value = String(defaultScale);

  const models = info.models || [];
  const byName = Object.fromEntries(models.map((m) => [m.name, m]));
  const anime = byName.anime;
  const animeInput = $("preset-anime");
  const animeOff = !anime || !anime.available;
  const animeReason = anime ? anime.reason || "not available" : "this server has no anime preset";
  animeInput.disabled = animeOff;
  $("anime-label").title = animeOff ? animeReason : anime.description || "";
  $("anime-hint").hidden = !animeOff;
  $("anime-hint").textContent = animeOff ? `Anime is unavailable: ${animeReason}` : "";
  if (animeOff) $("preset-photo").checked = true;
  const photo = byName.photo;
  if (photo && photo.description) $("preset-photo").nextElementSibling.title = photo.description;

  const others = models.filter((m) => !PRESETS.includes(m.name));
  const override = $("model-override");
  override.replaceChildren(option("", "The content preset above"));
  const jobModel = $("job-model");
  jobModel.replaceChildren();
  for (const m of models) {
    const text = m.description ? `${m.name} — ${shorten(m.description, 48)}` : m.name;
    const settings = { disabled: !m.available, title: m.available ? m.description || "" : m.reason || "" };
    if (!PRESETS.includes(m.name)) override.append(option(m.name, text, settings));
    jobModel.append(option(m.name, m.available ? text : `${m.name} (unavailable: ${m.reason})`, settings));
  }
  override.disabled = others.length === 0;
  jobModel.value = info.default || "photo";

  state.limits.maxUploadBytes = info.max_upload_bytes || null;
  $("limits-text").textContent = state.limits.maxUploadBytes
    ? `, up to ${formatBytes(state.limits.maxUploadBytes)} each.` : ".";
}

function currentSettings() {
  const scale = document.querySelector('input[name="scale"]:checked')?.value || "4";
  const preset = document.querySelector('input[name="preset"]:checked')?.value || "photo";
  const model = $("model-override").value || preset;
  return { scale, model, format: $("format-choice").value };
}

// ---- uploads ----------------------------------------------------------------------------------

const STATE_TEXT = { queued: "Queued", uploading: "Uploading", upscaling: "Upscaling", done: "Done", failed: "Failed" };

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  const settings = currentSettings();
  for (const file of files) {
    const element = $("result-template").content.firstElementChild.cloneNode(true);
    const item = { file, settings, element, state: "queued", running: false, inputUrl: URL.createObjectURL(file) };
    element.dataset.name = file.name;
    element.querySelector(".result-name").textContent = file.name;
    element.querySelector(".result-meta").textContent = `${formatBytes(file.size)} · ${settings.scale}× · ${settings.model}`;
    const thumb = element.querySelector(".thumb img");
    thumb.src = item.inputUrl;
    thumb.addEventListener("load", () => {
      item.inputSize = [thumb.naturalWidth, thumb.naturalHeight];
      element.querySelector(".result-meta").textContent =
        `${thumb.naturalWidth}×${thumb.naturalHeight} · ${formatBytes(file.size)} · ${settings.scale}× · ${settings.model}`;
    }, { once: true });
    // TIFF or DICOM: the browser cannot draw the original; the result replaces the thumbnail when done
    thumb.addEventListener("error", () => { item.inputUnviewable = true; thumb.removeAttribute("src"); }, { once: true });
    element.querySelector(".compare-button").addEventListener("click", () => {
      showCompare(item);
      $("compare").scrollIntoView({ block: "nearest", behavior: "smooth" });
    });
    element.querySelector(".retry-button").addEventListener("click", () => {
      setItemState(item, "queued");
      pump();
    });
    state.items.push(item);
    $("results").append(element);
    const max = state.limits.maxUploadBytes;
    if (max && file.size > max) {
      setItemState(item, "failed", `file too large: ${formatBytes(file.size)}, the server accepts up to ${formatBytes(max)}`);
      item.element.querySelector(".retry-button").hidden = true;
    } else {
      setItemState(item, "queued");
    }
  }
  pump();
}

function setItemState(item, newState, detail = "") {
  item.state = newState;
  const element = item.element;
  element.dataset.state = newState;
  const status = element.querySelector(".result-status");
  status.textContent = detail ? `${STATE_TEXT[newState]}: ${detail}` : STATE_TEXT[newState];
  const progress = element.querySelector(".result-progress");
  progress.hidden = newState === "done" || newState === "failed";
  if (newState === "queued") progress.value = 0;
  if (newState === "upscaling") progress.removeAttribute("value"); // indeterminate: the server does not report steps
  element.querySelector(".retry-button").hidden = newState !== "failed";
  if (newState === "failed") element.querySelector(".result-status").title = detail;
  updateSummary();
}

// Starts queued uploads while fewer than PARALLEL_UPLOADS run.
function pump() {
  while (state.running < PARALLEL_UPLOADS) {
    const next = state.items.find((item) => item.state === "queued" && !item.running);
    if (!next) return;
    next.running = true;
    state.running++;
    upscale(next).finally(() => {
      next.running = false;
      state.running--;
      pump();
    });
  }
}

// XMLHttpRequest, not fetch: only it reports upload progress (queued -> uploading -> upscaling).
function send(item) {
  const { scale, model, format } = item.settings;
  const query = new URLSearchParams({ scale, model, filename: item.file.name });
  if (format) query.set("format", format);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/upscale?${query}`);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Content-Type", item.file.type || "application/octet-stream");
    xhr.responseType = "blob";
    const progress = item.element.querySelector(".result-progress");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress.value = event.loaded / event.total;
    });
    xhr.upload.addEventListener("load", () => setItemState(item, "upscaling"));
    xhr.addEventListener("load", () => resolve(xhr));
    xhr.addEventListener("error", () => reject(new Error("the connection to the server failed")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
    xhr.send(item.file);
  });
}

async function upscale(item) {
  for (;;) {
    setItemState(item, "uploading");
    let xhr;
    try {
      xhr = await send(item);
    } catch (error) {
      setItemState(item, "failed", error.message);
      return;
    }
    if (xhr.status === 429) {
      const wait = retryAfterSeconds(xhr.getResponseHeader("Retry-After"));
      setItemState(item, "queued", `the server is busy, retrying in ${wait} s`);
      await sleep(wait * 1000);
      continue;
    }
    if (xhr.status < 200 || xhr.status >= 300) {
      const message = parseError(await xhr.response.text(), xhr.status);
      setItemState(item, "failed", message);
      if (xhr.status === 401) askForKey(`The key was not accepted: ${message}`);
      return;
    }
    finish(item, xhr);
    return;
  }
}

function downloadName(xhr, item) {
  const disposition = xhr.getResponseHeader("Content-Disposition") || "";
  const match = /filename\*=UTF-8''([^;]+)/i.exec(disposition) || /filename="?([^";]+)"?/i.exec(disposition);
  if (match) return decodeURIComponent(match[1]);
  const stem = item.file.name.replace(/\.[^.]*$/, "") || "image";
  return `${stem}_x${item.settings.scale}.png`;
}

function finish(item, xhr) {
  item.result = xhr.response;
  item.outputUrl = URL.createObjectURL(item.result);
  item.outputName = downloadName(xhr, item);
  const header = (name) => xhr.getResponseHeader(`X-Upscaler-${name}`);
  item.outputSize = [Number(header("Width")), Number(header("Height"))];
  item.model = header("Model") || item.settings.model;
  const element = item.element;
  const seconds = Number(header("Seconds-Total"));
  const parts = [
    item.inputSize ? `${item.inputSize[0]}×${item.inputSize[1]} → ` : "",
    `${item.outputSize[0]}×${item.outputSize[1]}`,
    ` · ${item.model}`,
    Number.isFinite(seconds) && seconds > 0 ? ` · ${seconds.toFixed(2)} s` : "",
    ` · ${formatBytes(item.result.size)}`,
  ];
  element.querySelector(".result-meta").textContent = parts.join("");
  const link = element.querySelector(".download-link");
  link.href = item.outputUrl;
  link.download = item.outputName;
  link.hidden = false;
  link.setAttribute("aria-label", `Download ${item.outputName}`);
  element.querySelector(".compare-button").hidden = false;
  element.querySelector(".compare-button").setAttribute("aria-label", `Compare ${item.file.name} before and after`);
  if (item.inputUnviewable) element.querySelector(".thumb img").src = item.outputUrl;
  setItemState(item, "done");
  if (!state.selected) showCompare(item);
}

function updateSummary() {
  const counts = { queued: 0, uploading: 0, upscaling: 0, done: 0, failed: 0 };
  for (const item of state.items) counts[item.state]++;
  const total = state.items.length;
  $("results-bar").hidden = total === 0;
  const busy = counts.queued + counts.uploading + counts.upscaling;
  const parts = [`${counts.done} of ${total} done`];
  if (counts.failed) parts.push(`${counts.failed} failed`);
  if (busy) parts.push(`${busy} in progress`);
  $("results-summary").textContent = parts.join(" · ");
  $("download-all").disabled = counts.done === 0;
  $("download-all").textContent = counts.done > 1 ? `Download all ${counts.done} (.zip)` : "Download all (.zip)";
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // revoking at once can cancel the download
}

async function downloadAll() {
  const done = state.items.filter((item) => item.state === "done");
  if (!done.length) return;
  const button = $("download-all");
  button.disabled = true;
  button.textContent = "Building the zip…";
  try {
    const names = uniqueNames(done.map((item) => item.outputName));
    const zip = await makeZip(done.map((item, i) => ({ name: names[i], blob: item.result })));
    saveBlob(zip, "upscaled.zip");
  } catch (error) {
    $("results-summary").textContent = `Cannot build the zip: ${error.message}`;
  } finally {
    updateSummary();
  }
}

function clearFinished() {
  for (const item of state.items.filter((i) => i.state === "done" || i.state === "failed")) {
    URL.revokeObjectURL(item.inputUrl);
    if (item.outputUrl) URL.revokeObjectURL(item.outputUrl);
    item.element.remove();
    if (state.selected === item) closeCompare();
  }
  state.items = state.items.filter((i) => i.state !== "done" && i.state !== "failed");
  updateSummary();
}

// ---- before/after comparison ------------------------------------------------------------------

function showCompare(item) {
  state.selected = item;
  for (const other of state.items) other.element.classList.toggle("selected", other === item);
  const [width, height] = item.outputSize;
  const stage = $("stage");
  // at least 480 px wide so small images are visible; never wider than the panel nor taller than 75% of the window
  stage.style.width = `min(100%, ${Math.max(width, 480)}px, calc(75vh * ${width / height}))`;
  stage.style.aspectRatio = `${width} / ${height}`;
  $("before-img").src = item.inputUnviewable ? "" : item.inputUrl;
  $("before-img").hidden = !!item.inputUnviewable;
  $("after-img").src = item.outputUrl;
  $("compare-title").textContent = `Compare: ${item.file.name}`;
  $("compare-note").textContent = item.inputUnviewable
    ? "This browser cannot draw the original's format; only the result is shown."
    : `Left of the line: the original ${item.inputSize ? `${item.inputSize.join("×")} ` : ""}drawn with square pixels; right: ${width}×${height} from ${item.model}.`;
  $("compare").hidden = false;
  setSlider($("compare-slider").value);
}

function setSlider(value) {
  $("stage").style.setProperty("--pos", `${value}%`);
}

function closeCompare() {
  state.selected = null;
  for (const item of state.items) item.element.classList.remove("selected");
  $("compare").hidden = true;
}

// ---- tabs -------------------------------------------------------------------------------------

function visibleTabs() {
  return [...document.querySelectorAll('[role="tab"]')].filter((tab) => !tab.hidden);
}

function selectTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !selected;
  }
  if (name === "jobs") startJobPolling();
  else stopJobPolling();
}

function onTabKey(event) {
  const tabs = visibleTabs();
  const index = tabs.indexOf(event.target);
  const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
  selectTab(next.id.replace("tab-", ""));
  next.focus();
}

// ---- batch jobs -------------------------------------------------------------------------------

function startJobPolling() {
  if (state.jobsTimer !== null) return;
  const tick = async () => {
    await refreshJobs();
    if (state.jobsTimer !== null) state.jobsTimer = setTimeout(tick, JOB_POLL_MS);
  };
  state.jobsTimer = setTimeout(tick, 0);
}

function stopJobPolling() {
  if (state.jobsTimer !== null) clearTimeout(state.jobsTimer);
  state.jobsTimer = null;
}

async function refreshJobs() {
  try {
    const response = await api("/v1/jobs");
    if (!response.ok) throw new Error(await errorMessage(response));
    renderJobs((await response.json()).jobs || []);
    $("jobs-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (!(error instanceof KeyRejected)) $("jobs-updated").textContent = `Cannot list jobs: ${error.message}`;
  }
}

function renderJobs(jobs) {
  const list = $("jobs");
  const existing = new Map([...list.children].map((row) => [row.dataset.jobId, row]));
  for (const job of jobs) {
    let row = existing.get(job.id);
    if (!row) row = newJobRow(job);
    existing.delete(job.id);
    updateJobRow(row, job);
    list.append(row); // moves an existing row: keeps the server's order (newest first)
  }
  for (const stale of existing.values()) stale.remove();
  $("jobs-empty").hidden = jobs.length > 0;
}

function showNewJob(job) {
  const list = $("jobs");
  const row = [...list.children].find((r) => r.dataset.jobId === job.id) || newJobRow(job);
  updateJobRow(row, job);
  list.prepend(row);
  $("jobs-empty").hidden = true;
}

function newJobRow(job) {
  const row = $("job-template").content.firstElementChild.cloneNode(true);
  row.dataset.jobId = job.id;
  row.querySelector(".job-id").textContent = job.id;
  row.querySelector(".job-src").textContent = job.src;
  row.querySelector(".job-dst").textContent = job.dst;
  row.querySelector(".job-progress").setAttribute("aria-label", `Progress of job ${job.id}`);
  const cancel = row.querySelector(".cancel-button");
  cancel.setAttribute("aria-label", `Cancel job ${job.id}`);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const response = await api(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      if (!response.ok) row.querySelector(".job-error").textContent = await errorMessage(response);
    } catch { /* a rejected key already shows the key form */ }
    refreshJobs();
  });
  return row;
}

// created_at: an ISO string or epoch seconds
function jobDate(value) {
  if (value === null || value === undefined || value === "") return null;
  return typeof value === "number" ? new Date(value * 1000) : new Date(value);
}

function updateJobRow(row, job) {
  row.dataset.jobState = job.state;
  const badge = row.querySelector(".job-state");
  badge.textContent = job.state;
  badge.dataset.state = job.state;
  const created = jobDate(job.created_at);
  row.querySelector(".job-time").textContent = created && !Number.isNaN(created.getTime())
    ? created.toLocaleString() : String(job.created_at ?? "");
  const progress = row.querySelector(".job-progress");
  if (job.progress === null || job.progress === undefined) progress.removeAttribute("value");
  else progress.value = job.progress;
  const counts = job.counts || {};
  const total = job.total ?? "?";
  row.querySelector(".job-counts").textContent =
    `${job.done} / ${total} images · ${counts.ok ?? 0} ok · ${counts.failed ?? 0} failed · ${counts.skipped ?? 0} skipped`;
  row.querySelector(".job-error").textContent = job.error || "";
  const report = row.querySelector(".report-link");
  report.hidden = !job.report_url;
  if (job.report_url) {
    report.href = job.report_url;
    report.setAttribute("aria-label", `Report of job ${job.id} (opens in a new tab)`);
  }
  const cancel = row.querySelector(".cancel-button");
  cancel.hidden = !(job.state === "queued" || job.state === "running");
  if (!LIVE_JOB_STATES.has(job.state)) cancel.disabled = true;
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const error = $("job-error");
  const options = { scale: Number($("job-scale").value), model: $("job-model").value };
  if ($("job-format").value) options.format = $("job-format").value;
  if ($("job-include").value.trim()) options.include = $("job-include").value.trim();
  const body = { src: $("job-src").value.trim(), dst: $("job-dst").value.trim(), options };
  const button = $("job-submit");
  button.disabled = true;
  error.textContent = "";
  try {
    const response = await api("/v1/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      error.textContent = await errorMessage(response);
      return;
    }
    const job = await response.json();
    showNewJob(job); // at once, before the next poll
    form.dataset.lastJob = job.id;
    await refreshJobs();
  } catch (caught) {
    if (!(caught instanceof KeyRejected)) error.textContent = `Cannot start the job: ${caught.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------------

function bindEvents() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim();
    localStorage.setItem(KEY_STORAGE, state.key);
    $("key-input").value = "";
    connect();
  });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    state.key = "";
    askForKey("");
  });

  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // choosing the same files again uploads them again
  });
  const zone = $("drop-zone");
  // a file dropped outside the zone would otherwise replace the page with the image
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragover", (event) => {
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });

  $("download-all").addEventListener("click", downloadAll);
  $("clear-results").addEventListener("click", clearFinished);
  $("compare-slider").addEventListener("input", (event) => setSlider(event.target.value));
  $("compare-close").addEventListener("click", closeCompare);

  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab.id.replace("tab-", "")));
    tab.addEventListener("keydown", onTabKey);
  }
  $("job-form").addEventListener("submit", submitJob);
}

bindEvents();
connect();

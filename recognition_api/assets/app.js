// The web page's script: plain JavaScript, no dependencies, no build step.
//
// The API key is typed in once and kept in this tab's sessionStorage. It is sent only in the
// Authorization header of requests to this origin: never in a URL, never logged, never written
// into the page. Everything the API returns is put into the page as text (textContent), never
// as HTML.
"use strict";

(function () {
  const STORAGE_KEY = "recognition.apiKey";
  const FIELDS = ["name", "category", "brand", "color"];
  const TIMINGS = [
    ["queue_wait", "Queue wait"], ["decode", "Decode"], ["prepare", "Prepare"],
    ["batch_wait", "Batch wait"], ["inference", "Inference"], ["total", "Total (server)"],
  ];
  const POLL_FOR_MS = 120000;
  const RESIZE_ABOVE_PX = 2048; // a long side above this is scaled down in the browser before upload
  const ROLLOUT_REFRESH_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const wait = Number(document.body.dataset.wait) || 10;
  let currentJob = null;
  let rolloutTimer = null;
  let previewUrl = null;

  // --- the key ---------------------------------------------------------------------------

  function apiKey() {
    try { return sessionStorage.getItem(STORAGE_KEY) || ""; } catch (e) { return ""; }
  }

  function showKeyState() {
    const has = Boolean(apiKey());
    $("key-form").hidden = has;
    $("key-saved").hidden = !has;
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    try { sessionStorage.setItem(STORAGE_KEY, key); } catch (e) { /* private mode: kept nowhere */ }
    showKeyState();
    if (currentView() === "rollout") loadRollout();
  });

  $("key-forget").addEventListener("click", () => {
    try { sessionStorage.removeItem(STORAGE_KEY); } catch (e) { /* nothing kept */ }
    showKeyState();
    $("key-input").focus();
  });

  // --- views (tabs) ----------------------------------------------------------------------

  function currentView() {
    return location.pathname.replace(/\/+$/, "") === "/rollout" ? "rollout" : "recognize";
  }

  function showView(view) {
    document.body.dataset.view = view;
    $("view-recognize").hidden = view !== "recognize";
    $("view-rollout").hidden = view !== "rollout";
    document.querySelectorAll("[data-tab]").forEach((tab) => {
      if (tab.dataset.tab === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    });
    document.title = (view === "rollout" ? "Rollout · " : "") + "Listing-photo recognition";
    clearInterval(rolloutTimer);
    rolloutTimer = null;
    if (view === "rollout") loadRollout();
  }

  document.querySelectorAll("[data-tab]").forEach((tab) => {
    tab.addEventListener("click", (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      if (tab.dataset.tab !== currentView()) history.pushState(null, "", tab.getAttribute("href"));
      showView(tab.dataset.tab);
    });
  });
  window.addEventListener("popstate", () => showView(currentView()));

  // --- talking to the API ----------------------------------------------------------------

  function parseJson(text) {
    try { return text ? JSON.parse(text) : null; } catch (e) { return null; }
  }

  async function getJson(path) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json", ...authHeaders() },
                                     cache: "no-store", credentials: "omit" });
    } catch (e) {
      return { status: 0, body: null };
    }
    return { status: response.status, body: parseJson(await response.text()),
             retryAfter: response.headers.get("Retry-After") };
  }

  // POST the photo with XMLHttpRequest: it reports the upload's progress, fetch does not.
  function uploadPhoto(blob, filename, onProgress, onSent) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/recognize?wait=" + encodeURIComponent(wait));
      const headers = authHeaders();
      Object.keys(headers).forEach((name) => xhr.setRequestHeader(name, headers[name]));
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      xhr.upload.addEventListener("load", onSent);
      xhr.addEventListener("load", () => resolve({
        status: xhr.status, body: parseJson(xhr.responseText), retryAfter: xhr.getResponseHeader("Retry-After"),
      }));
      xhr.addEventListener("error", () => resolve({ status: 0, body: null }));
      xhr.addEventListener("timeout", () => resolve({ status: 0, body: null }));
      const form = new FormData();
      form.append("image", blob, filename);
      xhr.send(form);
    });
  }

  function describeError(answer) {
    const error = (answer.body && answer.body.error) || {};
    const status = answer.status;
    let title;
    if (status === 0) title = "Could not reach the API";
    else if (status === 401) title = "The API key was not accepted (HTTP 401)";
    else if (status === 403) title = "This key may not do that (HTTP 403)";
    else if (status === 413 || status === 415 || status === 422) title = "The photo was refused (HTTP " + status + ")";
    else if (status === 429 || status === 503) title = "The service is busy (HTTP " + status + ")";
    else title = "The API answered HTTP " + status;
    let message = error.message || (status === 0
      ? "The network request failed; check your connection and try again."
      : "No explanation came with the answer.");
    if (answer.retryAfter) message += " Retry after " + answer.retryAfter + " s.";
    return { title: title, message: message, code: error.code || "" };
  }

  function showError(prefix, described) {
    $(prefix + "-title").textContent = described.title;
    $(prefix + "-message").textContent = described.message;
    $(prefix + "-code").textContent = described.code;
    $(prefix + "-code").hidden = !described.code;
    $(prefix).hidden = false;
  }

  // --- recognize -------------------------------------------------------------------------

  const progress = {
    show(text) {
      $("progress").hidden = false;
      $("progress").className = "progress";
      this.set(0, text);
    },
    set(fraction, text) {
      const pct = Math.round(fraction * 100);
      $("progress-fill").style.width = pct + "%";
      $("progress-bar").setAttribute("aria-valuenow", String(pct));
      $("progress-pct").textContent = pct + "%";
      if (text) $("progress-text").textContent = text;
    },
    waiting(text) {
      $("progress").className = "progress waiting";
      $("progress-text").textContent = text;
      $("progress-pct").textContent = "";
    },
    done(text, ok) {
      $("progress").className = ok ? "progress done" : "progress";
      $("progress-text").textContent = text;
      $("progress-pct").textContent = "";
      $("progress-fill").style.width = ok ? "100%" : $("progress-fill").style.width;
    },
  };

  function setPreview(file) {
    const img = $("preview");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    img.hidden = true;
    $("drop").classList.remove("has-preview");
    if (!file.type || !file.type.startsWith("image/")) return;
    previewUrl = URL.createObjectURL(file);
    img.onload = () => { img.hidden = false; $("drop").classList.add("has-preview"); };
    img.onerror = () => { img.hidden = true; $("drop").classList.remove("has-preview"); };
    img.src = previewUrl;
  }

  // A photo from a phone's camera can be 12 megapixels or more; the model needs far less.
  // Scale it down here when the browser can decode it; anything else goes as it is, and the
  // API says what is wrong with it.
  async function prepareUpload(file) {
    const name = file.name || "photo.jpg";
    if (!file.type.startsWith("image/") || typeof createImageBitmap !== "function") return { blob: file, name: name };
    let bitmap;
    try { bitmap = await createImageBitmap(file); } catch (e) { return { blob: file, name: name }; }
    const side = Math.max(bitmap.width, bitmap.height);
    if (side <= RESIZE_ABOVE_PX) { bitmap.close(); return { blob: file, name: name }; }
    const scale = RESIZE_ABOVE_PX / side;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    if (!blob) return { blob: file, name: name };
    return { blob: blob, name: name.replace(/\.[^.]*$/, "") + ".jpg",
             note: "scaled to " + canvas.width + "×" + canvas.height + " in the browser" };
  }

  async function recognize(file) {
    $("error").hidden = true;
    $("result").hidden = true;
    currentJob = null;
    setPreview(file);
    if (!apiKey()) {
      showError("error", { title: "No API key yet", message: "Enter your API key above, then choose the photo again.", code: "" });
      $("key-input").focus();
      return;
    }
    const started = performance.now();
    progress.show("Preparing " + (file.name || "the photo"));
    const upload = await prepareUpload(file);
    progress.set(0, "Uploading" + (upload.note ? " (" + upload.note + ")" : ""));
    let answer = await uploadPhoto(upload.blob, upload.name,
      (fraction) => progress.set(fraction),
      () => progress.waiting("Uploaded; the model is working on it"));
    // 202: not finished within the wait; ask again (each ask waits on the server).
    const deadline = Date.now() + POLL_FOR_MS;
    while (answer.status === 202 && answer.body && /^[0-9a-f]{32}$/.test(answer.body.id || "")) {
      if (Date.now() > deadline) {
        progress.done("Still not finished; try again later", false);
        return;
      }
      progress.waiting("Queued as job " + answer.body.id.slice(0, 8) + "…, waiting for the model");
      answer = await getJson("/v1/recognitions/" + answer.body.id + "?wait=" + encodeURIComponent(wait));
    }
    if (answer.status !== 200 || !answer.body) {
      $("progress").hidden = true; // the error says it all
      showError("error", describeError(answer));
      return;
    }
    if (answer.body.status === "failed") {
      $("progress").hidden = true;
      const error = answer.body.error || {};
      showError("error", { title: "The model could not recognize this photo",
                           message: error.message || "The job failed.", code: error.code || "" });
      return;
    }
    progress.done("Done in " + Math.round(performance.now() - started) + " ms", true);
    showResult(answer.body, performance.now() - started);
  }

  function pct(value) {
    return typeof value === "number" ? Math.round(value * 100) + "%" : "–";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fieldCard(name, field) {
    field = field || {};
    const blank = field.value === null || field.value === undefined || field.value === "";
    const card = el("div", "field" + (blank ? " blank" : ""));
    card.dataset.field = name;
    card.appendChild(el("div", "field-name", name));
    card.appendChild(el("div", "field-value", blank ? "left blank" : String(field.value)));
    const meter = el("div", "meter");
    meter.setAttribute("role", "img");
    meter.setAttribute("aria-label", "confidence " + pct(field.confidence) + ", threshold " + pct(field.threshold));
    const fill = el("div", "meter-fill");
    fill.style.width = Math.max(0, Math.min(100, (field.confidence || 0) * 100)) + "%";
    const mark = el("div", "meter-threshold");
    mark.style.left = "calc(" + Math.max(0, Math.min(100, (field.threshold || 0) * 100)) + "% - 1px)";
    meter.appendChild(fill);
    meter.appendChild(mark);
    card.appendChild(meter);
    card.appendChild(el("p", "field-why", blank
      ? "Confidence " + pct(field.confidence) + " is below this field's threshold of " + pct(field.threshold) +
        ", so the app leaves it blank."
      : "Confidence " + pct(field.confidence) + " (threshold " + pct(field.threshold) + ")."));
    const alternatives = Array.isArray(field.alternatives) ? field.alternatives : [];
    if (alternatives.length) {
      const list = el("ul", "alternatives");
      list.setAttribute("aria-label", "alternatives");
      alternatives.forEach((alt) => {
        const item = el("li");
        item.appendChild(el("b", "", String(alt.value)));
        item.appendChild(document.createTextNode(" " + pct(alt.confidence)));
        list.appendChild(item);
      });
      card.appendChild(list);
    } else {
      card.appendChild(el("p", "muted small", "No alternatives."));
    }
    return card;
  }

  function showResult(job, roundTripMs) {
    currentJob = job;
    const model = job.model || {};
    $("result-model").textContent = "model " + (model.name || "?") + " · version " + (model.version || "?");
    $("result-id").textContent = job.id;
    const fields = $("fields");
    fields.replaceChildren();
    const result = job.result || {};
    FIELDS.forEach((name) => fields.appendChild(fieldCard(name, result[name])));
    const timings = $("timings");
    timings.replaceChildren();
    const add = (label, value) => {
      const box = el("div");
      box.appendChild(el("dt", "", label));
      box.appendChild(el("dd", "", value));
      timings.appendChild(box);
    };
    const t = job.timings_ms || {};
    TIMINGS.forEach(([key, label]) => {
      if (typeof t[key] === "number") add(label, t[key].toFixed(1) + " ms");
    });
    if (typeof t.batch_size === "number") add("Batch size", String(t.batch_size));
    add("Round trip (this browser)", Math.round(roundTripMs) + " ms");
    const form = $("feedback");
    FIELDS.forEach((name) => { form.elements[name].value = (result[name] && result[name].value) || ""; });
    form.querySelector("button").disabled = false;
    $("feedback-status").textContent = "";
    $("feedback-status").className = "small";
    $("result").hidden = false;
  }

  $("feedback").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!currentJob) return;
    const form = event.target;
    const body = {};
    FIELDS.forEach((name) => { body[name] = form.elements[name].value.trim() || null; });
    const status = $("feedback-status");
    status.className = "small";
    status.textContent = "Sending…";
    let answer;
    try {
      const response = await fetch("/v1/recognitions/" + currentJob.id + "/feedback", {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
      answer = { status: response.status, body: parseJson(await response.text()) };
    } catch (e) {
      answer = { status: 0, body: null };
    }
    if (answer.status === 201 && answer.body) {
      const outcomes = answer.body.outcomes || {};
      status.className = "small ok-text";
      status.textContent = "Thank you. " + FIELDS.filter((n) => outcomes[n]).map((n) => n + ": " + outcomes[n]).join(", ") + ".";
      form.querySelector("button").disabled = true;
    } else {
      const described = describeError(answer);
      status.className = "small no";
      status.textContent = described.title + ": " + described.message + (described.code ? " (" + described.code + ")" : "");
    }
  });

  function chosen(input) {
    const file = input.files && input.files[0];
    input.value = ""; // choosing the same file again still fires "change"
    if (file) recognize(file);
  }

  $("file-input").addEventListener("change", (event) => chosen(event.target));
  $("camera-input").addEventListener("change", (event) => chosen(event.target));

  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) recognize(file);
  });
  // A file dropped next to the drop zone must not make the browser navigate away to it.
  ["dragover", "drop"].forEach((type) => window.addEventListener(type, (event) => event.preventDefault()));

  // --- rollout ---------------------------------------------------------------------------

  function versionCard(row, report) {
    const card = el("div", "version" + (row.role ? " " + row.role : ""));
    card.dataset.version = row.version;
    const head = el("h3");
    head.appendChild(el("span", "", "Version " + row.version));
    const badges = el("span");
    if (row.role) badges.appendChild(el("span", "role " + row.role, row.role));
    if (report.shadow === row.version) badges.appendChild(el("span", "role", "shadow " + pct(report.shadow_fraction)));
    head.appendChild(badges);
    card.appendChild(head);

    const stats = el("dl", "stats");
    const stat = (key, label, value, note, className) => {
      const box = el("div");
      box.dataset.stat = key;
      box.appendChild(el("dt", "", label));
      const dd = el("dd", className || "", value);
      if (note) dd.appendChild(el("small", "", note));
      box.appendChild(dd);
      stats.appendChild(box);
    };
    stat("ready_workers", "Ready workers", String(row.ready_workers), "", row.ready_workers ? "" : "no");
    stat("queue_depth", "Queue depth", String(row.queue_depth), row.queue);
    stat("verified", "Verified", row.verified ? "yes" : "no", "", row.verified ? "yes" : "no");
    stat("jobs", "Jobs", String(row.jobs), "last " + windowText(report));
    card.appendChild(stats);

    // Per field: live accuracy (from sellers' feedback) and, for the shadow, agreement.
    const table = el("table");
    const headRow = el("tr");
    headRow.appendChild(el("th", "", "per field"));
    FIELDS.forEach((name) => headRow.appendChild(el("th", "", name)));
    table.appendChild(el("thead")).appendChild(headRow);
    const body = table.appendChild(el("tbody"));
    const line = (label, value) => {
      const tr = el("tr");
      tr.appendChild(el("th", "", label));
      FIELDS.forEach((name) => tr.appendChild(el("td", "", value(name))));
      body.appendChild(tr);
    };
    line("Live accuracy", (name) => pct((row.accuracy || {})[name]));
    line("Feedback", (name) => String((row.feedback || {})[name] || 0));
    if (row.shadow_agreement) {
      line("Agrees with " + report.active, (name) => pct(row.shadow_agreement[name]));
    }
    const wrap = el("div", "per-field");
    wrap.appendChild(table);
    card.appendChild(wrap);
    if (row.shadow_agreement) {
      card.appendChild(el("p", "muted small", row.shadow_compared + " shadow copies compared with version " + report.active + "."));
    }
    return card;
  }

  function windowText(report) {
    const hours = (report.window_seconds || 0) / 3600;
    return hours >= 1 ? Math.round(hours) + " h" : Math.round(hours * 60) + " min";
  }

  function showRollout(report) {
    const summary = $("rollout-summary");
    summary.replaceChildren();
    const add = (label, value) => {
      const box = el("div");
      box.dataset.item = label.toLowerCase();
      box.appendChild(el("dt", "", label));
      box.appendChild(el("dd", "", value));
      summary.appendChild(box);
    };
    add("Active", report.active || "none");
    add("Previous", report.previous || "–");
    add("Canary", report.canary ? report.canary + " at " + pct(report.canary_weight) : "off");
    add("Shadow", report.shadow ? report.shadow + " at " + pct(report.shadow_fraction) : "off");
    const versions = $("rollout-versions");
    versions.replaceChildren();
    (report.versions || []).forEach((row) => versions.appendChild(versionCard(row, report)));
    $("rollout-updated").textContent = (report.updated_at
      ? "Last changed " + new Date(report.updated_at * 1000).toLocaleString() + " by " + (report.updated_by || "?") + ". "
      : "The rollout was never changed: the default version is active. ") +
      "Figures over the last " + windowText(report) + "; read at " + new Date().toLocaleTimeString() + ".";
    $("rollout-state").hidden = false;
  }

  async function loadRollout() {
    clearInterval(rolloutTimer);
    rolloutTimer = null;
    $("rollout-error").hidden = true;
    if (!apiKey()) {
      $("rollout-state").hidden = true;
      showError("rollout-error", { title: "No API key yet", message: "Enter a key with the ops scope above.", code: "" });
      return;
    }
    const answer = await getJson("/v1/rollout");
    if (answer.status !== 200 || !answer.body) {
      $("rollout-state").hidden = true;
      showError("rollout-error", describeError(answer));
      return;
    }
    showRollout(answer.body);
    if (currentView() === "rollout") rolloutTimer = setInterval(refreshRollout, ROLLOUT_REFRESH_MS);
  }

  async function refreshRollout() {
    if (document.hidden || currentView() !== "rollout") return;
    const answer = await getJson("/v1/rollout");
    if (answer.status === 200 && answer.body) showRollout(answer.body);
  }

  $("rollout-refresh").addEventListener("click", loadRollout);

  showKeyState();
  showView(currentView());
})();

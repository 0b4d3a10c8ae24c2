// The page: pick a model, give it an image, see what it says, where it looked and what it computed.

import { ApiError, getBlob, getJson, getKey, modelPath, postImage, setKey } from "./api.js";
import { DrawingPad } from "./pad.js";
import { bundleLimits, canDraw, defaultMethod, el, explainMethods, inputKind, mapLayers, renderBars, renderCard } from "./view.js";

const $ = (id) => document.getElementById(id);
const state = { models: [], detail: null, image: null, prediction: null, urls: {}, pending: 0, seq: {} };

/** A ticket per panel: an answer that arrives after a newer request was sent is dropped. */
function ticket(panel) {
  const n = (state.seq[panel] || 0) + 1;
  state.seq[panel] = n;
  return () => state.seq[panel] === n;
}

function banner(message) {
  const node = $("banner");
  node.textContent = message || "";
  node.hidden = !message;
}

function explainError(err) {
  if (err instanceof ApiError && err.status === 401) return "This service needs an API key: type it in the API key field (it is sent as a header, never in the address).";
  return err.message || String(err);
}

/** Run one request; failures go to the banner (or to `note` for a panel's own limits). */
async function guarded(work, note) {
  state.pending += 1;
  document.body.dataset.busy = "true";
  try {
    return await work();
  } catch (err) {
    if (note && err instanceof ApiError && err.status === 422) {
      note.textContent = err.message;
      note.hidden = false;
    } else {
      banner(explainError(err));
    }
    return null;
  } finally {
    state.pending -= 1;
    if (state.pending === 0) delete document.body.dataset.busy;
  }
}

function showBlob(img, key, blob) {
  if (state.urls[key]) URL.revokeObjectURL(state.urls[key]);
  state.urls[key] = URL.createObjectURL(blob);
  img.src = state.urls[key];
  img.hidden = false;
}

function path(suffix) {
  return `${modelPath(state.detail.name, String(state.detail.version))}${suffix}`;
}

// ---- models ----------------------------------------------------------------------------------

async function loadModels() {
  const list = await guarded(() => getJson("/v1/models"));
  if (!list) return;
  state.models = list.models;
  const select = $("model");
  select.replaceChildren(...list.models.map((m) => el("option", { value: m.name, text: `${m.name} (${m.architecture}, ${m.labels} classes)` })));
  if (list.broken?.length) banner(`Not loaded: ${list.broken.map((b) => `${b.name}/${b.version}: ${b.error}`).join("; ")}`);
  if (!list.models.length) {
    $("model-card").textContent = "No models are loaded: export one into the model directory (see the README).";
    return;
  }
  select.value = list.models.some((m) => m.name === "digits") ? "digits" : list.models[0].name;
  await pickModel();
}

async function pickModel() {
  const model = state.models.find((m) => m.name === $("model").value);
  $("version").replaceChildren(...[...model.versions].reverse().map((v) => el("option", { value: String(v), text: v === model.latest ? `${v} (latest)` : String(v) })));
  await pickVersion();
}

async function pickVersion() {
  const detail = await guarded(() => getJson(modelPath($("model").value, $("version").value)));
  if (!detail) return;
  banner("");
  state.detail = detail;
  const limits = bundleLimits(detail);
  renderCard($("model-card"), detail, limits);
  await showTraining();
  fillExplainControls(detail);
  fillLayers(detail);
  const drawable = canDraw(detail);
  $("tab-draw").disabled = !drawable;
  $("draw-note").textContent = drawable ? `The model sees the pad as ${inputKind(detail)}: draw one large digit.` : "";
  if (!drawable) selectTab("upload");
  orderSamples(detail);
  if (state.image) await analyze();
}

/** The card's training figures, fetched with the API key (an <img src> could not send it). */
async function showTraining() {
  const images = [...$("model-card").querySelectorAll("img[data-src]")];
  await Promise.all(
    images.map(async (img) => {
      const blob = await guarded(() => getBlob(img.dataset.src));
      if (blob) showBlob(img, `figure:${img.closest("figure").dataset.figure}`, blob);
    }),
  );
  const report = $("report");
  if (!report) return;
  report.addEventListener("toggle", async () => {
    const frame = report.querySelector("iframe");
    if (!report.open || frame.srcdoc) return;
    const blob = await guarded(() => getBlob(report.dataset.src));
    if (blob) frame.srcdoc = await blob.text();
  });
}

function fillExplainControls(detail) {
  const methods = explainMethods(detail);
  const method = $("method");
  method.replaceChildren(...methods.map((m) => el("option", { value: m.name, text: m.title || m.name })));
  method.value = defaultMethod(detail) || "";
  method.disabled = !methods.length;
  const target = $("target");
  target.replaceChildren(el("option", { value: "", text: "the predicted class" }), ...detail.labels.map((label, i) => el("option", { value: String(i), text: label })));
  target.disabled = !methods.length;
  $("alpha").disabled = !methods.length;
  const note = $("explain-note");
  note.hidden = methods.length > 0;
  note.textContent = methods.length ? "" : "This bundle offers no explanation methods (it was exported without an explain graph).";
  $("overlay").hidden = true;
  $("overlay-caption").textContent = "";
}

function fillLayers(detail) {
  const layers = mapLayers(detail);
  const select = $("layer");
  select.replaceChildren(...layers.map((l) => el("option", { value: l.name, text: `${l.name} (${l.map_shape.join("×")})` })));
  if (layers.length) select.value = layers[Math.min(1, layers.length - 1)].name;
  select.disabled = $("channels").disabled = !layers.length;
  const note = $("act-note");
  note.hidden = layers.length > 0;
  note.textContent = layers.length ? "" : "This bundle exports no feature maps, only pooled vectors.";
  $("activations").hidden = true;
  $("act-caption").textContent = "";
}

// ---- the image -------------------------------------------------------------------------------

async function setImage(blob, source, drawing = 0) {
  state.image = blob;
  document.body.dataset.source = source;
  if (source !== "pad") {
    showBlob($("preview"), "preview", blob);
    $("drop-hint").hidden = true;
  }
  const shown = await analyze();
  if (shown && drawing) $("pad").dataset.read = String(drawing); // every panel shows this drawing
}

async function analyze() {
  if (!state.detail || !state.image) return;
  const current = ticket("classify");
  const answer = await guarded(async () => (await postImage(path("/classify"), { top_k: Math.min(5, state.detail.labels.length) }, state.image)).json());
  if (!current()) return false;
  if (!answer) {  // the banner says why; stale panels would show another image's answer
    $("prediction").replaceChildren(el("p", { class: "muted", text: "No answer for this image." }));
    $("overlay").hidden = $("activations").hidden = true;
    return false;
  }
  banner("");
  state.prediction = answer.results[0];
  renderBars($("prediction"), state.prediction);
  await Promise.all([explain(), activations()]);
  return current();
}

async function explain() {
  const methods = explainMethods(state.detail);
  if (!state.image || !methods.length) return;
  const note = $("explain-note");
  note.hidden = true;
  const target = $("target").value;
  const params = { method: $("method").value, format: "overlay", alpha: $("alpha").value };
  // The explain contract names classes with `targets`; bundles served before it take `target`.
  if (target !== "") params[Array.isArray(state.detail.explain.methods) ? "targets" : "target"] = target;
  const key = JSON.stringify(params);
  const current = ticket("explain");
  const response = await guarded(() => postImage(path("/explain"), params, state.image), note);
  if (!current()) return;
  if (!response) {
    $("overlay").hidden = true;
    return;
  }
  const img = $("overlay");
  showBlob(img, "overlay", await response.blob());
  img.dataset.request = key;
  const label = decodeURIComponent(response.headers.get("X-Striate-Target-Label") || "");
  const title = methods.find((m) => m.name === params.method)?.title || params.method;
  $("overlay-caption").textContent = `${title} for class “${label}”: warm colours mark the pixels that raised its score.`;
}

async function activations() {
  const layer = $("layer").value;
  if (!state.image || !layer) return;
  const params = { layer, format: "png", channels: $("channels").value };
  const current = ticket("activations");
  const response = await guarded(() => postImage(path("/activations"), params, state.image), $("act-note"));
  if (!response || !current()) return;
  showBlob($("activations"), "activations", await response.blob());
  const shown = response.headers.get("X-Striate-Channels") || "";
  $("act-caption").textContent = `${layer}: channels ${shown}, each map scaled to its own range (bright = strong).`;
}

// ---- inputs ----------------------------------------------------------------------------------

function selectTab(name) {
  for (const tab of ["upload", "draw"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`pane-${tab}`).hidden = tab !== name;
  }
}

function firstImage(items) {
  for (const item of items || []) {
    const file = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

async function loadSamples() {
  let index;
  try {
    index = await (await fetch("/static/samples/index.json")).json();
  } catch {
    return;
  }
  const box = $("samples");
  for (const sample of index.samples) {
    const button = el(
      "button",
      { type: "button", class: "sample", title: sample.title, "data-kind": sample.kind, "data-file": sample.file },
      el("img", { src: `/static/samples/${sample.file}`, alt: sample.title, loading: "lazy" }),
      el("span", { text: sample.title }),
    );
    button.addEventListener("click", async () => {
      selectTab("upload");
      const blob = await (await fetch(`/static/samples/${sample.file}`)).blob();
      await setImage(blob, `sample:${sample.file}`);
    });
    box.append(button);
  }
  if (state.detail) orderSamples(state.detail);
}

/** Samples that suit the model first; the others stay clickable, marked as not what it expects. */
function orderSamples(detail) {
  const wanted = detail.input.channels === 1 ? "digit" : "photo";
  const buttons = [...$("samples").children];
  buttons.sort((a, b) => (a.dataset.kind === wanted ? 0 : 1) - (b.dataset.kind === wanted ? 0 : 1));
  for (const button of buttons) {
    button.classList.toggle("unsuited", button.dataset.kind !== wanted);
    $("samples").append(button);
  }
}

function wire() {
  $("model").addEventListener("change", pickModel);
  $("version").addEventListener("change", pickVersion);
  $("api-key").value = getKey();
  $("api-key").addEventListener("change", async () => {
    setKey($("api-key").value.trim());
    await loadModels();
  });
  $("tab-upload").addEventListener("click", () => selectTab("upload"));
  $("tab-draw").addEventListener("click", () => selectTab("draw"));
  const drop = $("dropzone");
  $("file").addEventListener("change", () => $("file").files[0] && setImage($("file").files[0], "file"));
  drop.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && $("file").click());
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = firstImage(e.dataTransfer.files);
    if (file) setImage(file, "drop");
    else banner("That was not an image file.");
  });
  document.addEventListener("paste", (e) => {
    const file = firstImage(e.clipboardData?.items);
    if (file) {
      selectTab("upload");
      setImage(file, "paste");
    }
  });
  const pad = new DrawingPad($("pad"), { onDrawn: (blob, n) => setImage(blob, "pad", n), penInput: $("pen"), invertInput: $("invert") });
  $("clear").addEventListener("click", () => pad.clear());
  $("method").addEventListener("change", explain);
  $("target").addEventListener("change", explain);
  let timer = null;
  $("alpha").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(explain, 150);
  });
  $("layer").addEventListener("change", activations);
  $("channels").addEventListener("change", activations);
}

wire();
await Promise.all([loadModels(), loadSamples()]);
document.body.dataset.ready = "true";

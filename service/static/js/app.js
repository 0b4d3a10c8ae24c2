// The page: pick a model, give it an image, see what it says, where it looked and what it computed.

import { ApiError, getBlob, getJson, getKey, modelPath, postImage, setKey } from "./api.js";
import { DrawingPad } from "./pad.js";
import {
  bundleLimits,
  canDraw,
  channelChoices,
  classAgnostic,
  defaultMethod,
  el,
  expectedInput,
  explainMethods,
  inputKind,
  mapLayers,
  missingMethods,
  renderBars,
  renderCard,
  sameMapCaption,
  wantedSampleKind,
} from "./view.js";

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
  if (err instanceof ApiError && err.status === 401) {
    return getKey()
      ? "The service refused this API key: check it and type it again (it is sent as a header, never in the address)."
      : "This service needs an API key: type it in the API key field (it is sent as a header, never in the address).";
  }
  return err.message || String(err);
}

/** Mark the page busy (body[data-busy]) while `work` runs. Whoever waits for the page to settle
 * reads the panels next, so the flag covers drawing the answer, not just its request. */
async function busy(work) {
  state.pending += 1;
  document.body.dataset.busy = "true";
  try {
    return await work();
  } finally {
    state.pending -= 1;
    if (state.pending === 0) delete document.body.dataset.busy;
  }
}

/** Run one request; failures go to the banner (or to `note` for a panel's own limits). */
async function guarded(work, note) {
  try {
    return await busy(work);
  } catch (err) {
    if (note && err instanceof ApiError && err.status === 422) {
      note.textContent = err.message;
      note.hidden = false;
    } else {
      banner(explainError(err));
    }
    return null;
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
  let list;
  try {
    list = await busy(() => getJson("/v1/models"));
  } catch (err) {  // the card says it too, instead of "Loading…" forever
    banner(explainError(err));
    $("model-card").replaceChildren(el("p", { class: "muted", text: explainError(err) }));
    return;
  }
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
  $("alpha").disabled = !methods.length;
  const note = $("explain-note");
  note.hidden = methods.length > 0;
  note.textContent = methods.length ? "" : "This bundle offers no explanation methods (it was exported without an explain graph).";
  const missing = missingMethods(detail);
  $("method-note").textContent = missing.length ? `Not offered by this bundle: ${missing.join(" ")}` : "";
  $("method-note").hidden = !missing.length;
  fitTargetToMethod();
  $("overlay").hidden = true;
  $("overlay-caption").textContent = "";
}

function currentMethod() {
  return explainMethods(state.detail).find((m) => m.name === $("method").value);
}

/** Say how the chosen method makes its map; a method whose map is the same for every class gets
 * no class to choose, and says why. */
function fitTargetToMethod() {
  const method = currentMethod();
  $("method-summary").textContent = method?.summary || "";
  const agnostic = Boolean(method) && classAgnostic(method);
  $("target").disabled = !method || agnostic;
  $("target-note").textContent = agnostic ? `${method.title || method.name} does not use the class: its map is the same for every class.` : "";
  $("target-note").hidden = !agnostic;
}

function fillLayers(detail) {
  const layers = mapLayers(detail);
  const select = $("layer");
  select.replaceChildren(...layers.map((l) => el("option", { value: l.name, text: `${l.name} (${l.map_shape.join("×")})` })));
  if (layers.length) select.value = layers[Math.min(1, layers.length - 1)].name;
  select.disabled = $("channels").disabled = !layers.length;
  fillChannels();
  const note = $("act-note");
  note.hidden = layers.length > 0;
  note.textContent = layers.length ? "" : "This bundle exports no feature maps, only pooled vectors.";
  $("activations").hidden = true;
  $("act-caption").textContent = "";
}

/** Channel counts up to the chosen layer's own (16, 32, 64, ..., all of them). */
function fillChannels() {
  const layer = mapLayers(state.detail).find((l) => l.name === $("layer").value);
  if (!layer) return;
  const choices = channelChoices(layer.map_shape[0]);
  const select = $("channels");
  const previous = Number(select.value) || 32;
  select.replaceChildren(...choices.map((n) => el("option", { value: String(n), text: n === layer.map_shape[0] ? `all ${n}` : String(n) })));
  select.value = String(choices.includes(previous) ? previous : Math.min(previous, choices.at(-1)));
}

// ---- the image -------------------------------------------------------------------------------

function setImage(blob, source, drawing = 0) {
  return busy(async () => {
    state.image = blob;
    state.source = source;
    document.body.dataset.source = source;
    if (source !== "pad") {
      showBlob($("preview"), "preview", blob);
      $("drop-hint").hidden = true;
    }
    const shown = await analyze();
    if (shown && drawing) $("pad").dataset.read = String(drawing); // every panel shows this drawing
  });
}

/** Forget the image and empty the panels; answers still on their way are dropped. */
function clearAnswers() {
  state.image = null;
  for (const panel of ["classify", "explain", "activations"]) ticket(panel);
  $("prediction").replaceChildren(el("p", { class: "muted", text: "Choose, drop, paste or draw an image." }));
  showMismatch(null);
  $("overlay").hidden = $("activations").hidden = true;
  $("overlay-caption").textContent = $("act-caption").textContent = "";
}

/** Why the image is not what the model was made for, or null: a sample of the other kind, or a
 * colour photo sent to a grayscale model. */
async function mismatch(detail, blob, source) {
  const wanted = wantedSampleKind(detail);
  if (source.startsWith("sample:")) {
    const kind = $("samples").querySelector(`[data-file="${CSS.escape(source.slice(7))}"]`)?.dataset.kind;
    return kind && kind !== wanted ? `this is a ${kind}` : null;
  }
  if (source !== "pad" && detail.input.channels === 1 && (await isColourful(blob))) return "this is a colour photo";
  return null;
}

/** Colour beyond a tint: the channels are balanced to one mean (gray world), then the mean spread
 * between a pixel's channels is taken. A scan or a photo of paper stays near 0, a photo well above. */
async function isColourful(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    return false; // not an image the browser decodes: the service will say so
  }
  const ctx = new OffscreenCanvas(64, 64).getContext("2d");
  ctx.drawImage(bitmap, 0, 0, 64, 64);
  const data = ctx.getImageData(0, 0, 64, 64).data;
  const n = data.length / 4;
  const mean = [0, 1, 2].map((c) => data.filter((_, i) => i % 4 === c).reduce((a, b) => a + b, 0) / n);
  const gray = (mean[0] + mean[1] + mean[2]) / 3;
  const gain = mean.map((m) => gray / Math.max(m, 1));
  let spread = 0;
  for (let i = 0; i < data.length; i += 4) {
    const rgb = [0, 1, 2].map((c) => data[i + c] * gain[c]);
    spread += Math.max(...rgb) - Math.min(...rgb);
  }
  return spread / n > 20;
}

function showMismatch(why) {
  const note = $("prediction-note");
  note.hidden = !why;
  note.textContent = why
    ? `This model expects ${expectedInput(state.detail)}; ${why}. A classifier always answers one of its ${state.detail.labels.length} labels, so a high score on an image unlike its training data says nothing.`
    : "";
}

async function analyze() {
  if (!state.detail || !state.image) return;
  const current = ticket("classify");
  const answer = await guarded(async () => (await postImage(path("/classify"), { top_k: Math.min(5, state.detail.labels.length) }, state.image)).json());
  if (!current()) return false;
  if (!answer) {  // the banner says why; stale panels would show another image's answer
    $("prediction").replaceChildren(el("p", { class: "muted", text: "No answer for this image." }));
    showMismatch(null);
    $("overlay").hidden = $("activations").hidden = true;
    return false;
  }
  banner("");
  state.prediction = answer.results[0];
  renderBars($("prediction"), state.prediction);
  const why = await mismatch(state.detail, state.image, state.source);
  if (!current()) return false;
  showMismatch(why);
  await Promise.all([explain(), activations()]);
  return current();
}

async function explain() {
  const methods = explainMethods(state.detail);
  if (!state.image || !methods.length) return;
  const note = $("explain-note");
  note.hidden = true;
  const agnostic = classAgnostic(currentMethod());
  const target = agnostic ? "" : $("target").value;
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
  const method = methods.find((m) => m.name === params.method);
  const title = method?.title || params.method;
  $("overlay-caption").textContent = agnostic
    ? sameMapCaption(method, state.detail.explain.target_layer)
    : `${title} for class “${label}”: warm colours mark the pixels that raised its score.`;
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
      { type: "button", class: "sample", title: sample.title, "data-kind": sample.kind, "data-file": sample.file, "data-title": sample.title },
      el("img", { src: `/static/samples/${sample.file}`, alt: sample.title, loading: "lazy" }),
      el("span", { text: sample.title }),
      el("small", { class: "expects", hidden: true }),
    );
    // Busy from the click on: fetching the sample is part of answering it.
    button.addEventListener("click", () =>
      busy(async () => {
        selectTab("upload");
        const blob = await (await fetch(`/static/samples/${sample.file}`)).blob();
        await setImage(blob, `sample:${sample.file}`);
      }),
    );
    box.append(button);
  }
  if (state.detail) orderSamples(state.detail);
}

/** Samples that suit the model first; the others stay clickable, marked as not what it expects. */
function orderSamples(detail) {
  const wanted = wantedSampleKind(detail);
  const buttons = [...$("samples").children];
  buttons.sort((a, b) => (a.dataset.kind === wanted ? 0 : 1) - (b.dataset.kind === wanted ? 0 : 1));
  for (const button of buttons) {
    const unsuited = button.dataset.kind !== wanted;
    button.classList.toggle("unsuited", unsuited);
    button.title = unsuited ? `${button.dataset.title}: not what this model expects (${expectedInput(detail)})` : button.dataset.title;
    const mark = button.querySelector(".expects");
    mark.textContent = unsuited ? `model expects ${wanted}s` : "";
    mark.hidden = !unsuited;
    $("samples").append(button);
  }
}

/** A dragged image of this page (a sample thumbnail) arrives as its address, not as a file. */
function draggedImageUrl(data) {
  const uri = data.getData("text/uri-list").split(/\r?\n/).find((line) => line && !line.startsWith("#"));
  const html = data.getData("text/html");
  const src = uri || (html && new DOMParser().parseFromString(html, "text/html").querySelector("img")?.getAttribute("src"));
  if (!src) return null;
  const url = new URL(src.trim(), location.href);
  return url.origin === location.origin ? url : null;
}

async function dropped(data) {
  const file = firstImage(data.files);
  if (file) return setImage(file, "drop");
  const url = draggedImageUrl(data);
  if (!url) return banner("That was not an image file, nor an image of this page.");
  const blob = await (await fetch(url)).blob();
  if (!blob.type.startsWith("image/")) return banner("That was not an image.");
  const sample = url.pathname.match(/^\/static\/samples\/([^/]+)$/);
  return setImage(blob, sample ? `sample:${decodeURIComponent(sample[1])}` : "drop");
}

function wire() {
  $("model").addEventListener("change", () => busy(pickModel));
  $("version").addEventListener("change", () => busy(pickVersion));
  $("api-key").value = getKey();
  $("api-key").addEventListener("change", () => {
    setKey($("api-key").value.trim());
    return busy(loadModels);
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
    busy(() => dropped(e.dataTransfer));
  });
  document.addEventListener("paste", (e) => {
    const file = firstImage(e.clipboardData?.items);
    if (file) {
      selectTab("upload");
      setImage(file, "paste");
    }
  });
  const pad = new DrawingPad($("pad"), { onDrawn: (blob, n) => setImage(blob, "pad", n), penInput: $("pen"), invertInput: $("invert") });
  $("clear").addEventListener("click", () => {
    pad.clear();
    if (state.source === "pad") clearAnswers();
  });
  $("method").addEventListener("change", () => {
    fitTargetToMethod();
    return busy(explain);
  });
  $("target").addEventListener("change", () => busy(explain));
  let timer = null;
  $("alpha").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => busy(explain), 150);
  });
  $("layer").addEventListener("change", () => {
    fillChannels();
    return busy(activations);
  });
  $("channels").addEventListener("change", () => busy(activations));
}

wire();
await busy(() => Promise.all([loadModels(), loadSamples()]));
document.body.dataset.ready = "true";

// Pure rendering: model metadata and API answers -> DOM. No requests here.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

/** The gradient-free methods work on every bundle; before the explain contract, a bundle with an
 * explain graph offered Grad-CAM alone (its `explain` field has no `methods`). */
export function explainMethods(detail) {
  const ex = detail.explain;
  if (!ex) return [];
  if (Array.isArray(ex.methods)) return ex.methods;
  return [{ name: ex.method || "gradcam", title: "Grad-CAM", kind: "gradient", parity: detail.provenance?.parity?.max_abs_diff_cam ?? null }];
}

/** Methods whose map does not depend on the class (`per_class: false`): Eigen-CAM is the target
 * layer's first principal component, whatever the model decided. */
export function classAgnostic(method) {
  return method?.per_class === false;
}

/** The caption of a class-agnostic map; how the method makes it is its `summary`, shown by the picker. */
export function sameMapCaption(method, layer) {
  return `${method.title || method.name}: the map is the same for every class. Warm colours mark what ${layer} responds to most, not the evidence for one class.`;
}

/** Sentences naming the explanation methods the bundle cannot run, one per reason the service gives. */
export function missingMethods(detail) {
  const byReason = new Map();
  for (const m of detail.explain?.unavailable || []) {
    byReason.set(m.why, [...(byReason.get(m.why) || []), m.title || m.name]);
  }
  return [...byReason].map(([why, titles]) => `${titles.join(", ")}: ${why}.`);
}

export function defaultMethod(detail) {
  return detail.explain?.default_method || explainMethods(detail)[0]?.name || null;
}

export function mapLayers(detail) {
  return detail.layers.filter((layer) => Array.isArray(layer.map_shape));
}

/** Drawing suits small grayscale models (digits); a photo model would read a doodle as noise. */
export function canDraw(detail) {
  return detail.input.channels === 1 && Math.max(detail.input.height, detail.input.width) <= 64;
}

export function inputKind(detail) {
  const { channels, height, width } = detail.input;
  return channels === 1 ? `grayscale ${width}×${height}` : `RGB ${width}×${height}`;
}

/** Which of the page's samples suit the model: grayscale models read digits, RGB ones photos. */
export function wantedSampleKind(detail) {
  return detail.input.channels === 1 ? "digit" : "photo";
}

export function expectedInput(detail) {
  return `${inputKind(detail)} ${wantedSampleKind(detail)}s`;
}

/** How many feature maps the channel menu offers for a layer of `count` channels: up to all. */
export function channelChoices(count) {
  return [...[16, 32, 64].filter((n) => n < count), count];
}

/** Top-k as labelled bars, best first. */
export function renderBars(container, prediction) {
  container.replaceChildren();
  const top1 = prediction.top_k[0];
  container.append(
    el("p", { class: "verdict" }, "It reads ", el("strong", { id: "top1", text: top1.label }), ` (${pct(top1.probability)} sure)`),
  );
  for (const item of prediction.top_k) {
    const bar = el("div", { class: "fill" });
    bar.style.width = `${Math.max(0.5, 100 * item.probability)}%`;
    container.append(
      el(
        "div",
        { class: item.index === top1.index ? "bar best" : "bar", "data-label": item.label },
        el("span", { class: "label", text: item.label, title: item.label }),
        el("span", { class: "track" }, bar),
        el("span", { class: "value", text: pct(item.probability) }),
      ),
    );
  }
}

function row(list, term, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", { text: term }), el("dd", {}, value));
}

const fmt = (v) => (typeof v === "number" ? (Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(1) : String(+v.toFixed(4))) : String(v));

function chips(items, limit = 40) {
  const box = el("span", { class: "chips" });
  for (const item of items.slice(0, limit)) box.append(el("span", { class: "chip", text: item }));
  if (items.length > limit) box.append(el("span", { class: "muted", text: ` … and ${items.length - limit} more` }));
  return box;
}

/** The model card: what the manifest says about the bundle, and what it cannot do. */
export function renderCard(container, detail, limits) {
  const p = detail.preprocessing;
  const prov = detail.provenance || {};
  const list = el("dl", { class: "facts" });
  row(list, "Model", `${detail.name} v${detail.version}${detail.latest ? " (latest)" : ""}; versions ${detail.versions.join(", ")}`);
  row(list, "Architecture", detail.architecture);
  row(list, "Runs on", detail.provider);
  row(list, "Input", `${inputKind(detail)} (${detail.input.layout}, ${detail.input.dtype})`);
  row(
    list,
    "Preprocessing",
    `${p.color_mode}, resize ${p.resize_mode} to ${p.resize_size.join("×")}, crop ${p.crop_size.join("×")}, ${p.interpolation}; mean ${p.mean.map(fmt).join(", ")}, std ${p.std.map(fmt).join(", ")}`,
  );
  row(list, `Labels (${detail.labels.length})`, chips(detail.labels));
  const metrics = Object.entries(detail.metrics || {});
  if (metrics.length) {
    row(list, "Metrics", chips(metrics.map(([k, v]) => `${k} ${fmt(v)}`)));
  }
  row(list, "Data", prov.data);
  row(list, "Weights", prov.quantization ? `INT8 (${prov.quantization})` : "float32 (not quantized)");
  if (prov.parity) {
    const par = prov.parity;
    const cam = par.max_abs_diff_cam != null ? `, Grad-CAM ${fmt(par.max_abs_diff_cam)}` : "";
    row(list, "Parity", `against ${par.reference}: max |Δ| logits ${fmt(par.max_abs_diff_logits)}, embedding ${fmt(par.max_abs_diff_embedding)}${cam} on ${par.images} images (tolerance ${fmt(par.tolerance)})`);
  }
  const methods = explainMethods(detail);
  if (methods.length) {
    const names = methods.map((m) => `${m.title || m.name}${m.parity != null ? ` (parity ${fmt(m.parity)})` : ""}`);
    row(list, "Explanations", `${names.join(", ")}; target layer ${detail.explain.target_layer ?? "none"}`);
  }
  const layers = detail.layers.map((l) => (l.map_shape ? `${l.name} ${l.map_shape.join("×")}` : `${l.name} (${l.dim}-d vector)`));
  row(list, "Layers", chips(layers));
  const made = [prov.created && `exported ${prov.created.replace("T", " ").slice(0, 16)} UTC`, prov.torch && `torch ${prov.torch}`, prov.onnx && `onnx ${prov.onnx}`, prov.opset && `opset ${prov.opset}`, prov.onnxruntime && `onnxruntime ${prov.onnxruntime}`].filter(Boolean);
  row(list, "Provenance", made.join(" · "));
  if (prov.checkpoint) row(list, "Checkpoint", `${prov.checkpoint}${prov.checkpoint_sha256 ? ` (sha256 ${prov.checkpoint_sha256.slice(0, 12)}…)` : ""}`);
  container.replaceChildren(list);
  if (detail.figures?.length || detail.report) container.append(trainingSection(detail));
  if (limits.length) {
    container.append(el("h3", { text: "What this bundle cannot do" }), el("ul", { class: "limits" }, ...limits.map((t) => el("li", { text: t }))));
  }
}

/** The training figures (their images are fetched by the page, with the API key) and the report,
 * shown in a sandboxed frame: static HTML from the bundle, never allowed to run a script here. */
function trainingSection(detail) {
  const section = el("section", { class: "training", id: "training" }, el("h3", { text: "How it was trained" }));
  const gallery = el("div", { class: "figures" });
  for (const figure of detail.figures || []) {
    gallery.append(
      el(
        "figure",
        { class: "figure training-figure", "data-figure": figure.name },
        el("img", { alt: figure.caption, "data-src": figure.url, hidden: true }),
        el("figcaption", { class: "muted", text: figure.caption }),
      ),
    );
  }
  if (gallery.children.length) section.append(gallery);
  if (detail.report) {
    const frame = el("iframe", { title: "training report", class: "report-frame" });
    frame.setAttribute("sandbox", "");
    section.append(
      el(
        "details",
        { id: "report", "data-src": detail.report },
        el("summary", { text: "Training report: per-class precision and recall, every epoch, the run's configuration" }),
        frame,
      ),
    );
  }
  return section;
}

/** Sentences saying what the current bundle does not offer, shown on the card and next to the panels. */
export function bundleLimits(detail) {
  const limits = [];
  if (!explainMethods(detail).length) limits.push("No explanations: the bundle was exported without an explain graph.");
  for (const missing of missingMethods(detail)) limits.push(`Not offered: ${missing}`);
  if (!mapLayers(detail).length) limits.push("No feature maps: the bundle exports pooled vectors only.");
  if (!canDraw(detail)) limits.push(`No drawing pad: it expects ${inputKind(detail)} photos, not a doodle.`);
  return limits;
}

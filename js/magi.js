// MAGI-1 frontend extension: where MAGI-1 differs from other video models.
// - MAGI-1 Sampler: live chunk count, output frames and seconds for width/frames/fps (and the prefix), and a
//   strip of each finished chunk while the next one denoises (websocket event "magi.chunk").
// - MAGI-1 Prompt Schedule: the ranges as a timeline in chunks and seconds for the connected sampler, with the
//   exact error a run would raise (computed by the server: /magi/schedule, /magi/chunk_info).
// - MAGI-1 DiT Loader: the detected size and variant after it runs.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TEXT_ENCODERS = ["MagiTextEncode", "MagiCLIPTextEncode"];
const COLORS = ["#e0a040", "#4aa3df", "#8bc34a", "#e06080", "#a080e0", "#40c0b0", "#d0d050", "#f08050"];
const POLL_MS = 700;

const css = `
.magi-panel { font: 12px sans-serif; color: var(--input-text, #ddd); padding: 4px 6px; box-sizing: border-box;
  overflow: hidden; width: 100%; }
.magi-info { opacity: .85; white-space: pre-wrap; }
.magi-error { color: #ff7070; white-space: pre-wrap; }
.magi-bar { display: flex; height: 22px; border-radius: 4px; overflow: hidden; margin: 4px 0 2px 0;
  background: #333; }
.magi-seg { display: flex; align-items: center; justify-content: center; overflow: hidden; white-space: nowrap;
  color: #111; font-weight: bold; border-right: 1px solid #222; }
.magi-axis { display: flex; justify-content: space-between; opacity: .7; font-size: 11px; }
.magi-legend div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.magi-strip { display: flex; gap: 3px; overflow-x: auto; margin-top: 4px; }
.magi-strip img { height: 72px; border-radius: 3px; }
`;

function addStyle() {
  if (document.getElementById("magi-style")) return;
  const style = document.createElement("style");
  style.id = "magi-style";
  style.textContent = css;
  document.head.appendChild(style);
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function value(node, name, fallback) {
  const w = widget(node, name);
  return w === undefined ? fallback : w.value;
}

function panel(node, name, height) {
  const el = document.createElement("div");
  el.className = "magi-panel";
  const w = node.addDOMWidget(name, "magi_" + name, el, { serialize: false, hideOnZoom: false,
    getMinHeight: () => height, getValue: () => undefined, setValue: () => {} });
  w.serialize = false; // never part of widgets_values: saved workflows keep their widget order
  return el;
}

// Pixel frames of the sampler's prefix: 0 (none), 1 (an image), the encode node's max_frames, or null (unknown).
function prefixFrames(sampler) {
  const slot = sampler.findInputSlot?.("prefix");
  if (slot === undefined || slot < 0) return 0;
  const enc = sampler.getInputNode(slot);
  if (!enc) return 0;
  const src = enc.getInputNode?.(enc.findInputSlot("image"));
  if (src?.type === "LoadImage") return 1;
  const max = value(enc, "max_frames", 0);
  return max > 0 ? max : null; // every frame goes to the VAE (magi_core.pipeline.prefix_latent_count)
}

// The sampler a schedule node feeds: schedule -> text encoder -> sampler.
function downstreamSampler(node) {
  for (const enc of node.getOutputNodes?.(0) ?? []) {
    if (!TEXT_ENCODERS.includes(enc.type)) continue;
    for (const s of enc.getOutputNodes?.(0) ?? []) if (s.type === "MagiSampler") return s;
  }
  return null;
}

async function getJSON(route, body) {
  const res = await api.fetchApi(route, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return res.json();
}

function poll(node, key, update) {
  let last = null;
  const timer = setInterval(() => {
    const k = key();
    if (k !== last) {
      last = k;
      update().catch((e) => console.warn("MAGI-1 extension:", e));
    }
  }, POLL_MS);
  const removed = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(timer);
    return removed?.apply(this, arguments);
  };
}

function setupSampler(node) {
  const info = panel(node, "chunk_info", 120);
  info.classList.add("magi-info");
  const strip = document.createElement("div");
  strip.className = "magi-strip";
  const box = document.createElement("div");
  info.appendChild(box);
  info.appendChild(strip);
  node.magiStrip = strip;
  const key = () => JSON.stringify([value(node, "num_frames"), value(node, "fps"), prefixFrames(node),
    value(node, "width"), value(node, "height")]);
  poll(node, key, async () => {
    const prefix = prefixFrames(node);
    const q = new URLSearchParams({ frames: value(node, "num_frames", 96), fps: value(node, "fps", 24),
      prefix_frames: prefix ?? 0 });
    const r = await getJSON("/magi/chunk_info?" + q);
    if (r.error) {
      box.className = "magi-error";
      box.textContent = r.error;
      return;
    }
    box.className = "";
    const size = `${value(node, "width")}x${value(node, "height")}`;
    box.textContent = `${r.generated_chunks} chunk${r.generated_chunks === 1 ? "" : "s"} of ${r.frames_per_chunk} ` +
      `frames (${r.chunk_seconds.toFixed(2)} s) -> ${r.output_frames} frames, ${r.seconds.toFixed(2)} s at ${size}` +
      (prefix === null ? " (+ video prefix)" : prefix === 1 ? " (image prefix)" : prefix ? ` (${prefix}-frame prefix)` : "");
  });
}

function renderTimeline(el, r) {
  el.replaceChildren();
  if (!r.ok) {
    const err = document.createElement("div");
    err.className = "magi-error";
    err.textContent = r.error;
    el.appendChild(err);
    return;
  }
  const n = r.schedule_chunks;
  const bar = document.createElement("div");
  bar.className = "magi-bar";
  const legend = document.createElement("div");
  legend.className = "magi-legend";
  r.ranges.forEach((g, i) => {
    const chunks = g.last_chunk - g.first_chunk + 1;
    const seg = document.createElement("div");
    seg.className = "magi-seg";
    seg.style.width = `${(100 * chunks) / n}%`;
    seg.style.background = COLORS[i % COLORS.length];
    seg.textContent = chunks > 1 ? `${g.first_chunk}-${g.last_chunk}` : `${g.first_chunk}`;
    seg.title = g.prompt;
    bar.appendChild(seg);
    const line = document.createElement("div");
    line.style.color = COLORS[i % COLORS.length];
    line.textContent = `${g.start_s.toFixed(1)}-${g.end_s.toFixed(1)} s: ${g.prompt}`;
    legend.appendChild(line);
  });
  const axis = document.createElement("div");
  axis.className = "magi-axis";
  axis.innerHTML = `<span>0 s</span><span>${n} chunks</span><span>${(n * r.chunk_seconds).toFixed(1)} s</span>`;
  el.append(bar, axis, legend);
}

function setupSchedule(node) {
  const el = panel(node, "timeline", 110);
  const key = () => {
    const s = downstreamSampler(node);
    return JSON.stringify([value(node, "schedule", ""), s && value(s, "num_frames"), s && value(s, "fps"),
      s && prefixFrames(s)]);
  };
  poll(node, key, async () => {
    const s = downstreamSampler(node);
    const body = { text: value(node, "schedule", ""), frames: s ? value(s, "num_frames", 96) : 96,
      fps: s ? value(s, "fps", 24) : 24, prefix_frames: (s && prefixFrames(s)) || 0 };
    const r = await getJSON("/magi/schedule", body);
    if (r.error && r.ok === undefined) r.ok = false;
    renderTimeline(el, r);
    if (!s && r.ok) {
      const hint = document.createElement("div");
      hint.className = "magi-info";
      hint.textContent = "(96 frames at 24 fps: connect through a MAGI text encoder to a MAGI sampler)";
      el.appendChild(hint);
    }
  });
}

function setupLoader(node) {
  const el = panel(node, "detected", 36);
  el.classList.add("magi-info");
  el.textContent = "size and variant are shown after the first run";
  const executed = node.onExecuted;
  node.onExecuted = function (message) {
    if (message?.text?.length) el.textContent = message.text.join("\n");
    return executed?.apply(this, arguments);
  };
}

function onChunk({ detail }) {
  const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
  if (!node?.magiStrip) return;
  if (detail.index === 0) node.magiStrip.replaceChildren();
  const img = document.createElement("img");
  const im = detail.image;
  img.src = api.apiURL(`/view?filename=${encodeURIComponent(im.filename)}&subfolder=${encodeURIComponent(im.subfolder)}` +
    `&type=${im.type}&rand=${Math.random()}`);
  img.title = `chunk ${detail.index + 1}/${detail.total}`;
  node.magiStrip.appendChild(img);
  node.setDirtyCanvas?.(true, true);
}

const NAME = "magi1.nodes";
// ComfyUI may serve js/ under two names (WEB_DIRECTORY and pyproject's [tool.comfy] web): register once.
if (!app.extensions?.some((e) => e.name === NAME)) app.registerExtension({
  name: NAME,
  setup() {
    addStyle();
    api.addEventListener("magi.chunk", onChunk);
  },
  nodeCreated(node) {
    const setup = { MagiSampler: setupSampler, MagiPromptSchedule: setupSchedule, MagiDiTLoader: setupLoader }[node.comfyClass];
    if (setup) setup(node);
  },
});

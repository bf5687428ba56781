// MAGI-1 frontend extension: where MAGI-1 differs from other video models.
// - MAGI-1 Sampler: live chunk count, output frames and seconds for width/frames/fps (and the prefix) with why
//   they differ from num_frames, a warning when Create Video plays at another fps, the guidance scales greyed
//   out for models that ignore them, and a strip of each finished chunk while the next one denoises (websocket
//   event "magi.chunk"). A MAGI-1 VAE Encode feeding it follows its width, height and fps.
// - MAGI-1 Decode to Video File: the same strip and progress while it writes the file.
// - MAGI-1 Prompt Schedule: the ranges as a timeline in chunks and seconds for the connected sampler, with the
//   exact error a run would raise (computed by the server: /magi/schedule, /magi/chunk_info); a MAGI text
//   encoder it feeds shows the schedule in its (linked) prompt.
// - MAGI-1 DiT Loader: the detected size and variant, read from the checkpoint before any run (/magi/dit_info).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TEXT_ENCODERS = ["MagiTextEncode", "MagiCLIPTextEncode"];
const DIT_WIDGETS = ["model", "variant", "weight_dtype", "attention", "precision", "device", "special_tokens", "compile",
  "block_swap"];
const GUIDANCE_WIDGETS = ["text_scale", "prev_chunk_scale"]; // unused by distill / fp8 models (one pass, no guidance)
const COLORS = ["#e0a040", "#4aa3df", "#8bc34a", "#e06080", "#a080e0", "#40c0b0", "#d0d050", "#f08050"];
const POLL_MS = 700;
const STRIP_MAX = 24; // chunk previews kept in a node's strip

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
.magi-warn { color: #f0b050; white-space: pre-wrap; }
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
    getMinHeight: () => Math.max(height, el.scrollHeight), // long notes push the chunk strip down, not out
    getValue: () => undefined, setValue: () => {} });
  w.serialize = false; // never part of widgets_values: saved workflows keep their widget order
  return el;
}

function inputNode(node, name) {
  const slot = node.findInputSlot?.(name);
  return slot === undefined || slot < 0 ? null : node.getInputNode(slot);
}

// ComfyUI nodes that change an image but not how many there are: an image prefix stays one frame through them.
const ONE_IMAGE_IN_ONE_OUT = new Set(["ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageCrop",
  "ImageInvert", "ImageSharpen", "ImageBlur", "ImageQuantize", "ImageFlip", "ImageRotate", "ImagePadForOutpaint",
  "ResizeAndPadImage", "Reroute"]);

// Is this IMAGE one image file (Load Image), seen through nodes that keep it one image (scale, crop, ...)?
function imageSource(src, depth = 0) {
  if (!src || depth > 8) return false;
  if (src.type === "LoadImage") return true;
  if (!ONE_IMAGE_IN_ONE_OUT.has(src.type)) return false; // e.g. RepeatImageBatch: no longer one frame
  const slot = (src.inputs ?? []).findIndex((i) => (i.type === "IMAGE" || i.type === "*") && i.link != null);
  return slot >= 0 && imageSource(src.getInputNode(slot), depth + 1);
}

// Pixel frames of the sampler's prefix: 0 (none), 1 (an image), the encode node's max_frames, or null (unknown).
function prefixFrames(sampler) {
  const slot = sampler.findInputSlot?.("prefix");
  if (slot === undefined || slot < 0) return 0;
  const enc = sampler.getInputNode(slot);
  if (!enc) return 0;
  if (imageSource(enc.getInputNode?.(enc.findInputSlot("image")))) return 1;
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

// The Create Video nodes fed (through MAGI VAE Decode) by this sampler.
function createVideoNodes(sampler) {
  const out = [];
  for (const dec of sampler.getOutputNodes?.(0) ?? []) {
    for (const cv of dec.getOutputNodes?.(0) ?? []) if (cv.type === "CreateVideo") out.push(cv);
  }
  return out;
}

// Text and CFG widgets a distill / fp8 model ignores: greyed out (the loader's info says whether guidance runs).
function markGuidance(node) {
  const info = inputNode(node, "model")?.magiInfo;
  const cfg = inputNode(node, "options") ? value(inputNode(node, "options"), "cfg_number", "auto") : "auto";
  const unused = cfg === "1" || (cfg === "auto" && info?.guidance === false);
  for (const name of GUIDANCE_WIDGETS) {
    const w = widget(node, name);
    if (!w || !!w.disabled === unused) continue;
    w.disabled = unused;
    w.label = unused ? `${name} (unused: ${cfg === "1" ? "cfg_number 1" : info.variant})` : undefined;
    node.setDirtyCanvas?.(true, true);
  }
}

// MAGI VAE Encode feeding the prefix follows the sampler's width, height and fps (one place to type them).
function syncPrefixSize(node) {
  const enc = inputNode(node, "prefix");
  if (enc?.type !== "MagiVAEEncode") return;
  for (const name of ["width", "height", "fps"]) {
    const w = widget(enc, name);
    const v = value(node, name);
    if (w && v !== undefined && w.value !== v) {
      w.value = v;
      enc.setDirtyCanvas?.(true, true);
    }
  }
}

// A panel with a text line (returned) above the strip where onChunk shows each finished chunk.
function chunkPanel(node, name, height, ...between) {
  const el = panel(node, name, height);
  el.classList.add("magi-info");
  const box = document.createElement("div");
  const strip = document.createElement("div");
  strip.className = "magi-strip";
  el.append(box, ...between, strip);
  node.magiStrip = strip;
  return box;
}

function setupSampler(node) {
  const warn = document.createElement("div");
  warn.className = "magi-warn";
  const box = chunkPanel(node, "chunk_info", 120, warn);
  const key = () => {
    markGuidance(node);
    syncPrefixSize(node);
    return JSON.stringify([value(node, "num_frames"), value(node, "fps"), prefixFrames(node),
      value(node, "width"), value(node, "height"), value(node, "steps"), value(node, "window_size"),
      createVideoNodes(node).map((cv) => value(cv, "fps")), value(node, "preview"), !!inputNode(node, "vae")]);
  };
  poll(node, key, async () => {
    const prefix = prefixFrames(node);
    const fps = value(node, "fps", 24);
    const q = new URLSearchParams({ frames: value(node, "num_frames", 96), fps, prefix_frames: prefix ?? 0,
      steps: value(node, "steps", 0), window_size: value(node, "window_size", 0) });
    const r = await getJSON("/magi/chunk_info?" + q);
    if (r.error) {
      box.className = "magi-error";
      box.textContent = r.error;
      warn.textContent = "";
      return;
    }
    box.className = "";
    const size = `${value(node, "width")}x${value(node, "height")}`;
    box.textContent = `${r.generated_chunks} chunk${r.generated_chunks === 1 ? "" : "s"} of ${r.frames_per_chunk} ` +
      `frames (${r.chunk_seconds.toFixed(2)} s) -> ${r.output_frames} frames, ${r.seconds.toFixed(2)} s at ${size}` +
      (prefix === null ? " (+ video prefix)" : prefix === 1 ? " (image prefix)" :
        prefix ? ` (${prefix}-frame prefix, if the video has that many)` : "");
    const notes = r.note ? [r.note] : [];
    const preview = value(node, "preview", "off");
    if (preview !== "off" && !inputNode(node, "vae")) { // the run says it too (nodes/generation.run), after the fact
      notes.push(`preview '${preview}' needs the vae input: connect the VAE loader to the sampler to see each chunk ` +
        "(no previews this run)");
    }
    for (const cv of createVideoNodes(node)) {
      const cvFps = value(cv, "fps");
      if (cvFps !== undefined && Number(cvFps) !== Number(fps)) {
        notes.push(`Create Video plays at ${cvFps} fps, the sampler makes ${fps} fps: the video will last ` +
          `${(r.output_frames / cvFps).toFixed(2)} s; give both the same fps`);
      }
    }
    warn.textContent = notes.join("\n");
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
  for (const w of r.warnings ?? []) { // what the caption cleaner removes, times moved to chunk boundaries
    const line = document.createElement("div");
    line.className = "magi-warn";
    line.textContent = w;
    el.appendChild(line);
  }
}

function setupSchedule(node) {
  const el = panel(node, "timeline", 110);
  const key = () => {
    const s = downstreamSampler(node);
    mirrorSchedule(node);
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

// A text encoder whose prompt comes from this schedule shows the schedule (not a stale text of its own). The text
// the user typed there is kept in the node's properties (saved with the workflow) and comes back when the schedule
// is disconnected (setupTextEncoder).
function mirrorSchedule(node) {
  const text = value(node, "schedule", "");
  for (const enc of node.getOutputNodes?.(0) ?? []) {
    if (!TEXT_ENCODERS.includes(enc.type)) continue;
    const w = widget(enc, "prompt");
    if (w && w.value !== text) {
      enc.properties ??= {};
      if (enc.properties.magi_own_prompt === undefined) enc.properties.magi_own_prompt = w.value;
      w.value = text;
      enc.setDirtyCanvas?.(true, true);
    }
  }
}

function restoreOwnPrompt(node) {
  const own = node.properties?.magi_own_prompt;
  if (own === undefined || inputNode(node, "prompt")) return;
  const w = widget(node, "prompt");
  if (w) w.value = own;
  delete node.properties.magi_own_prompt;
  node.setDirtyCanvas?.(true, true);
}

function setupTextEncoder(node) {
  const timer = setInterval(() => restoreOwnPrompt(node), POLL_MS);
  const removed = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(timer);
    return removed?.apply(this, arguments);
  };
}

function setupLoader(node) {
  const el = panel(node, "detected", 56);
  el.classList.add("magi-info");
  const key = () => JSON.stringify(DIT_WIDGETS.map((n) => value(node, n)));
  poll(node, key, async () => {
    const body = {};
    for (const n of DIT_WIDGETS) if (widget(node, n)) body[n] = value(node, n);
    const r = await getJSON("/magi/dit_info", body);
    node.magiInfo = r.error ? null : r;
    el.className = "magi-panel " + (r.error ? "magi-error" : "magi-info");
    el.textContent = r.error ?? r.text;
  });
}

function setupWriter(node) {
  node.magiStatus = chunkPanel(node, "chunks", 96);
  node.magiStatus.textContent = "writes the video chunk by chunk; finished chunks show here";
}

function onChunk({ detail }) {
  const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
  if (!node?.magiStrip) return;
  const strip = node.magiStrip;
  if (detail.index === 0) strip.replaceChildren();
  while (strip.children.length >= STRIP_MAX) strip.firstChild.remove(); // long videos: the latest
  // follow the newest chunk, unless the user scrolled back to look at an earlier one
  const follow = strip.scrollLeft + strip.clientWidth >= strip.scrollWidth - 8;
  const img = document.createElement("img");
  const im = detail.image;
  img.src = api.apiURL(`/view?filename=${encodeURIComponent(im.filename)}&subfolder=${encodeURIComponent(im.subfolder)}` +
    `&type=${im.type}&rand=${Math.random()}`);
  img.title = `chunk ${detail.index + 1}/${detail.total}`;
  strip.appendChild(img);
  if (follow) {
    const toEnd = () => { strip.scrollLeft = strip.scrollWidth; };
    toEnd();
    img.addEventListener("load", toEnd, { once: true }); // its width is known once it has loaded
  }
  if (node.magiStatus) node.magiStatus.textContent = `chunk ${detail.index + 1}/${detail.total} written`;
  node.setDirtyCanvas?.(true, true);
}

// What the polls keep in step (widget values that go into the prompt), done at once when a prompt is made: a run
// queued right after typing a size must not find the encoder at the old one (it lagged up to POLL_MS).
function syncBeforeQueue() {
  const graphs = [app.graph, ...(app.graph?.subgraphs?.values?.() ?? [])]; // nodes inside subgraphs too
  for (const node of graphs.flatMap((g) => g?.nodes ?? g?._nodes ?? [])) {
    if (node.comfyClass === "MagiSampler") syncPrefixSize(node);
    else if (node.comfyClass === "MagiPromptSchedule") mirrorSchedule(node);
    else if (TEXT_ENCODERS.includes(node.comfyClass)) restoreOwnPrompt(node);
  }
}

const NAME = "magi1.nodes";
// ComfyUI may serve js/ under two names (WEB_DIRECTORY and pyproject's [tool.comfy] web): register once.
if (!app.extensions?.some((e) => e.name === NAME)) app.registerExtension({
  name: NAME,
  setup() {
    addStyle();
    api.addEventListener("magi.chunk", onChunk);
    const graphToPrompt = app.graphToPrompt;
    app.graphToPrompt = async function () {
      try {
        syncBeforeQueue();
      } catch (e) {
        console.warn("MAGI-1 extension:", e);
      }
      return graphToPrompt.apply(this, arguments);
    };
  },
  nodeCreated(node) {
    const setup = { MagiSampler: setupSampler, MagiPromptSchedule: setupSchedule, MagiDiTLoader: setupLoader,
      MagiDecodeToVideoFile: setupWriter, MagiTextEncode: setupTextEncoder, MagiCLIPTextEncode: setupTextEncoder,
    }[node.comfyClass];
    if (setup) setup(node);
  },
});

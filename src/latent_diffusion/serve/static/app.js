// The page: a form over the same JSON API that programs use (see /openapi.json).
// Generation requests ask for ?stream=1 and read NDJSON events (queued / progress / result /
// error) so the progress bar moves once per denoising step; Cancel aborts the fetch, which the
// server sees as a disconnect and stops the job at its next step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { task: "txt2img", info: null, controller: null, hasImage: false };

// ---- model info and queue status ---------------------------------------------------------------
async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  state.info = info;
  const sampler = $("sampler");
  for (const name of info.samplers) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    if (name === info.sampling_defaults.sampler) option.selected = true;
    sampler.appendChild(option);
  }
  $("steps").max = info.limits.max_steps;
  $("num-images").max = info.limits.max_images;
  $("model-info").textContent = `model ${(info.model_hash || "in memory").slice(0, 12)} · ` +
    `${info.native_size}px · ${info.conditioner} conditioning`;
  for (const button of document.querySelectorAll("#tabs button")) {
    if (!info.tasks.includes(button.dataset.task)) {
      button.title = "not enabled on this server (start it with --upscaler PATH)";
    }
  }
  selectTask("txt2img");
}

async function refreshQueue() {
  try {
    const { queue } = await (await fetch("/api/health")).json();
    $("queue-info").textContent = `queue: ${queue.running} running, ${queue.waiting} waiting`;
  } catch (err) {
    $("queue-info").textContent = "server unreachable";
  }
}

// ---- tabs --------------------------------------------------------------------------------------
const NOTES = {
  txt2img: "Images from a prompt.",
  img2img: "Variations of an uploaded image; strength 0 keeps it, 1 redraws it.",
  inpaint: "Upload an image, paint the region to repaint, then generate.",
  upscale: "An uploaded image made larger by the upscaling model.",
};

function selectTask(task) {
  state.task = task;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.task === task));
  }
  const enabled = !state.info || state.info.tasks.includes(task);
  $("task-note").textContent = enabled ? NOTES[task]
    : `${task} is not enabled on this server: start it with \`ldm serve --upscaler PATH\`.`;
  $("task-note").classList.toggle("error", !enabled);
  $("generate").disabled = !enabled || state.controller !== null;
  const image = task !== "txt2img";
  $("input-image").hidden = !image;
  for (const el of document.querySelectorAll(".for-inpaint")) el.hidden = task !== "inpaint";
  for (const el of document.querySelectorAll(".for-strength")) el.hidden = !(task === "img2img" || task === "inpaint");
  $("strength").value = task === "inpaint" ? "1" : "0.75";
  // The model's own defaults (a consistency model samples with lcm, few steps and its guidance).
  const defaults = state.info ? state.info.sampling_defaults : { sampler: "dpmpp_2m", steps: 25, guidance: 5 };
  $("guidance").value = task === "upscale" ? "1" : String(defaults.guidance);
  $("steps").value = task === "upscale" ? "25" : String(defaults.steps);
  $("sampler").value = task === "upscale" ? "dpmpp_2m" : defaults.sampler;
}

// ---- input image and mask painting -------------------------------------------------------------
function setInputImage(source, width, height) {
  // Centre-crop to a square: the models make square images and refuse others.
  const side = Math.min(width, height);
  for (const canvas of [$("image-canvas"), $("mask-canvas")]) {
    canvas.width = side;
    canvas.height = side;
  }
  $("image-canvas").getContext("2d").drawImage(source, (width - side) / 2, (height - side) / 2, side, side,
                                               0, 0, side, side);
  clearMask();
  $("brush").max = Math.max(1, Math.round(side / 2));
  $("brush").value = Math.max(1, Math.round(side / 8));
  state.hasImage = true;
}

function loadFile(file) {
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => { setInputImage(image, image.naturalWidth, image.naturalHeight); URL.revokeObjectURL(url); };
  image.onerror = () => showError(`${file.name} is not an image the browser can read`);
  image.src = url;
}

function clearMask() {
  const mask = $("mask-canvas");
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, mask.width, mask.height);
}

function paintAt(event) {
  const mask = $("mask-canvas");
  const box = mask.getBoundingClientRect();
  const x = (event.clientX - box.left) * mask.width / box.width;
  const y = (event.clientY - box.top) * mask.height / box.height;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(x, y, Number($("brush").value) / 2, 0, 2 * Math.PI);
  ctx.fill();
}

function setupPainting() {
  const mask = $("mask-canvas");
  let painting = false;
  mask.addEventListener("pointerdown", (e) => { painting = true; mask.setPointerCapture(e.pointerId); paintAt(e); });
  mask.addEventListener("pointermove", (e) => { if (painting) paintAt(e); });
  for (const name of ["pointerup", "pointercancel"]) mask.addEventListener(name, () => { painting = false; });
  $("clear-mask").addEventListener("click", clearMask);
}

function maskDataUrl() {
  // Canvas strokes are anti-aliased; the API takes a binary mask, so threshold every pixel.
  const mask = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const pixels = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const data = pixels.data;
  let painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] >= 128 ? 255 : 0;
    painted += v ? 1 : 0;
    data[i] = data[i + 1] = data[i + 2] = v;
    data[i + 3] = 255;
  }
  out.getContext("2d").putImageData(pixels, 0, 0);
  return { url: out.toDataURL("image/png"), painted };
}

// ---- generation --------------------------------------------------------------------------------
function number(id) { return Number($(id).value); }

function buildRequest() {
  const body = {
    prompt: $("prompt").value,
    sampler: $("sampler").value,
    steps: number("steps"),
    guidance: number("guidance"),
    num_images: number("num-images"),
  };
  const negative = $("negative").value;
  if (negative) body.negative_prompt = negative;
  if (!$("random-seed").checked) body.seed = number("seed");
  if (state.task !== "txt2img") {
    if (!state.hasImage) throw new Error("upload an input image first");
    body.image = $("image-canvas").toDataURL("image/png");
  }
  if (state.task === "img2img" || state.task === "inpaint") body.strength = number("strength");
  if (state.task === "inpaint") {
    const mask = maskDataUrl();
    if (!mask.painted) throw new Error("paint the region to repaint on the image first");
    body.mask = mask.url;
  }
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showError(message) { setStatus(message, true); }

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
}

async function generate(event) {
  event.preventDefault();
  let body;
  try {
    body = buildRequest();
  } catch (err) {
    showError(err.message);
    return;
  }
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  $("progress").value = 0;
  setStatus("sending…");
  const task = state.task;
  try {
    const response = await fetch(`/api/${task}?stream=1`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ detail: response.statusText }));
      showError(`${response.status}: ${error.detail}`);
      return;
    }
    await readEvents(response, task);
  } catch (err) {
    if (err.name === "AbortError") setStatus("cancelled");
    else showError(`request failed: ${err.message}`);
  } finally {
    state.controller = null;
    setBusy(false);
    refreshQueue();
  }
}

async function readEvents(response, task) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (line.trim()) handleEvent(JSON.parse(line), task);
    }
  }
}

function handleEvent(event, task) {
  if (event.event === "queued") {
    setStatus(`waiting in line: position ${event.position}`);
  } else if (event.event === "progress") {
    $("progress").max = Math.max(1, event.total);
    $("progress").value = event.step;
    setStatus(`step ${event.step} / ${event.total}`);
  } else if (event.event === "result") {
    $("progress").value = $("progress").max;
    const { result } = event;
    setStatus(`done: seed ${result.seed}, ${result.images.length} image(s) in ` +
              `${(result.timings.encode + result.timings.denoise + result.timings.decode).toFixed(2)} s`);
    for (const image of result.images) addToGallery(image, task);
  } else if (event.event === "error") {
    showError(`${event.status}: ${event.detail}`);
  }
}

function addToGallery(image, task) {
  const url = `data:image/png;base64,${image.png_base64}`;
  const meta = image.metadata;
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.seed = String(image.seed);
  figure.dataset.task = task;
  const img = document.createElement("img");
  img.src = url;
  img.alt = meta.prompts.join(" | ") || "(no prompt)";
  img.title = JSON.stringify(meta, null, 1);
  const caption = document.createElement("figcaption");
  const prompt = meta.prompts[Math.floor(image.index / meta.num_images)] || "(no prompt)";
  caption.textContent = `${task} · seed ${image.seed} · #${image.index} · ${meta.sampler} ${meta.steps} steps · ` +
    `“${prompt}”`;
  const actions = document.createElement("div");
  actions.className = "actions";
  const download = document.createElement("a");
  download.href = url;
  download.download = `ldm-${task}-${image.seed}-${image.index}.png`;
  download.textContent = "Download PNG";
  const reuse = document.createElement("a");
  reuse.href = "#";
  reuse.textContent = "Use as input";
  reuse.addEventListener("click", (e) => {
    e.preventDefault();
    if (state.task === "txt2img") selectTask("img2img");
    setInputImage(img, img.naturalWidth, img.naturalHeight);
  });
  actions.append(download, reuse);
  figure.append(img, caption, actions);
  $("gallery").prepend(figure);
}

// ---- wiring ------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => selectTask(button.dataset.task));
  }
  $("random-seed").addEventListener("change", () => { $("seed").disabled = $("random-seed").checked; });
  $("image-file").addEventListener("change", (e) => { if (e.target.files[0]) loadFile(e.target.files[0]); });
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  setupPainting();
  loadInfo().catch((err) => showError(`cannot load model info: ${err.message}`));
  refreshQueue();
  setInterval(refreshQueue, 3000);
});

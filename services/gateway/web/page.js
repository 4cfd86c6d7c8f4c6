// StreamChar page: a WebSocket to the gateway (/ws, JSON control messages + binary media), the media
// fed to Media Source Extensions as it arrives. Protocol: services/gateway/web.py.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video");
const state = {
  ws: null, mediaSource: null, buffer: null, queue: [], character: null, upload: null,
  text: "", started: 0, firstMedia: null, chunks: 0, chunkSeconds: 0.32, dropFrom: null, ended: false,
};
// What the page did, for people and for tests: window.streamchar.events
window.streamchar = { events: [], state };

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function log(type, detail) {
  window.streamchar.events.push({ type, t: performance.now(), ...detail });
}

function showError(message) {
  $("error").textContent = message;
  setStatus("error", "error");
  log("error", { message });
}

async function loadCharacters() {
  const names = await (await fetch("/characters")).json();
  for (const name of names) {
    const img = document.createElement("img");
    img.src = `/characters/${encodeURIComponent(name)}`;
    img.alt = name;
    img.dataset.name = name;
    img.setAttribute("role", "radio");
    img.addEventListener("click", () => choose(name));
    $("characters").append(img);
  }
  if (names.length) choose(names[0]);
}

function choose(name) {
  state.character = name;
  state.upload = null;
  $("upload").value = "";
  for (const img of $("characters").children) img.setAttribute("aria-checked", String(img.dataset.name === name));
}

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  state.upload = btoa(binary);
  for (const img of $("characters").children) img.setAttribute("aria-checked", "false");
});

function pump() {
  const b = state.buffer;
  if (!b || b.updating || !state.queue.length) return;
  const next = state.queue.shift();
  try {
    if (next.remove) b.remove(next.remove, Infinity);
    else if (next.end) { if (state.mediaSource.readyState === "open") state.mediaSource.endOfStream(); }
    else b.appendBuffer(next);
  } catch (e) {
    showError(`media: ${e.message}`);
  }
}

function openMedia(mime) {
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    showError(`this browser cannot play ${mime}`);
    return false;
  }
  state.mediaSource = new MediaSource();
  video.src = URL.createObjectURL(state.mediaSource);
  state.mediaSource.addEventListener("sourceopen", () => {
    state.buffer = state.mediaSource.addSourceBuffer(mime);
    state.buffer.mode = "segments";
    state.buffer.addEventListener("updateend", pump);
    pump();
  }, { once: true });
  return true;
}

function onMessage(event) {
  if (typeof event.data !== "string") {  // media: the init segment, then one fragment per chunk
    if (state.dropFrom !== null) return;
    if (state.firstMedia === null) {
      state.firstMedia = performance.now() - state.started;
      $("stat-first").textContent = `${(state.firstMedia / 1000).toFixed(2)} s`;
    }
    state.queue.push(new Uint8Array(event.data));
    pump();
    if (video.paused && !state.ended) video.play().catch(() => {});
    return;
  }
  const m = JSON.parse(event.data);
  log(m.type, m);
  switch (m.type) {
    case "started":
      state.chunkSeconds = m.frames_per_chunk / m.fps;
      setStatus(m.trained ? "speaking" : "speaking (untrained models)", "speaking");
      break;
    case "init":
      openMedia(m.mime_type);
      break;
    case "progress": {
      state.chunks += 1;
      $("stat-chunks").textContent = String(state.chunks);
      $("stat-latency").textContent = `${(m.latency_seconds * 1000).toFixed(0)} ms`;
      $("stat-render").textContent = `${(m.render_seconds * 1000).toFixed(0)} ms`;
      const chars = [...state.text];
      $("spoken").textContent = chars.slice(0, m.pointer).join("");
      $("unspoken").textContent = chars.slice(m.pointer).join("");
      break;
    }
    case "interrupted":
      // Media from this chunk on no longer speaks the dropped text: drop what is buffered from there.
      state.dropFrom = m.next_chunk_index * state.chunkSeconds;
      state.queue.push({ remove: Math.max(state.dropFrom, video.currentTime) });
      state.queue.push({ end: true });
      pump();
      setStatus("interrupted", "idle");
      break;
    case "end":
      state.ended = true;
      if (state.dropFrom === null) { state.queue.push({ end: true }); pump(); }
      setStatus(m.reason === "interrupted" ? "interrupted" : "done", "idle");
      finish();
      break;
    case "error":
      showError(`${m.code_name}: ${m.message}`);
      finish();
      break;
  }
}

function finish() {
  $("speak").disabled = false;
  $("interrupt").disabled = true;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.close();
}

function* words(text) {
  const re = /\s*\S+\s*/g;
  let m;
  while ((m = re.exec(text)) !== null) yield m[0];
}

async function speak() {
  const text = $("text").value;
  if (!text.trim()) { showError("type something for the character to say"); return; }
  if (state.ws) state.ws.close();
  Object.assign(state, { queue: [], buffer: null, text, started: performance.now(), firstMedia: null, chunks: 0,
                         dropFrom: null, ended: false });
  $("error").textContent = "";
  $("spoken").textContent = "";
  $("unspoken").textContent = text;
  for (const id of ["stat-first", "stat-latency", "stat-render"]) $(id).textContent = "–";
  $("stat-chunks").textContent = "0";
  $("speak").disabled = true;
  $("interrupt").disabled = false;
  setStatus("connecting", "idle");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", () => { if (!state.ended && $("speak").disabled) { showError("connection closed"); finish(); } });
  await new Promise((resolve, reject) => { ws.addEventListener("open", resolve, { once: true });
                                           ws.addEventListener("error", reject, { once: true }); });
  const start = { type: "start", realtime: true };
  if (state.upload) start.image = state.upload; else start.character = state.character;
  ws.send(JSON.stringify(start));
  log("start", { character: state.character, upload: !!state.upload });
  if ($("stream-words").checked) {
    for (const w of words(text)) {
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({ type: "text", text: w }));
      await new Promise((r) => setTimeout(r, 120));  // a chat model's pace
    }
  } else {
    ws.send(JSON.stringify({ type: "text", text }));
  }
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
}

function interrupt() {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: "interrupt" }));
    log("interrupt", { currentTime: video.currentTime });
  }
  $("interrupt").disabled = true;
}

setInterval(() => {
  const b = video.buffered;
  if (b.length) $("stat-ahead").textContent = `${Math.max(0, b.end(b.length - 1) - video.currentTime).toFixed(2)} s`;
}, 250);

$("speak").addEventListener("click", () => speak().catch((e) => { showError(`cannot connect: ${e.type || e}`); finish(); }));
$("interrupt").addEventListener("click", interrupt);
loadCharacters().catch((e) => showError(`characters: ${e.message}`));

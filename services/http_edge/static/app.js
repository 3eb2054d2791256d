// The edge's web page: pick a voice, stream POST /synthesize/stream, and play the PCM while it arrives.
//
// State for tests and tools lives on <body> as data attributes:
//   data-state              loading | idle | streaming | playing | done | stopped | error
//   data-scheduled-seconds  seconds of audio handed to the Web Audio clock so far
//   data-underruns          times the stream fell behind playback (a gap was heard)
//   data-ttfa-ms            click to first audio scheduled, in ms
//   data-stream-seconds     click to the last byte of the stream, in seconds
//   data-error-code         the `code` of the last JSON error body
//   data-typed-deltas       "speak as I type": text deltas sent in the current turn
//
// "Speak as I type" streams the text box to the WebSocket /v1/audio/speech/stream as it is typed: each completed word
// is a text delta, Enter or Speak sends the rest and ends the turn. A voice that streams text input (CosyVoice2)
// starts speaking before the sentence is complete; other voices speak each sentence once it is complete.

const $ = (id) => document.getElementById(id);

// Scheduling lead on the first buffer and after an underrun: long enough that start() is never in the past.
const LEAD_S = 0.05;
// The waveform keeps one min/max pair per 10 ms and fits at least this many seconds across the canvas.
const BIN_S = 0.01;
const MIN_VIEW_S = 8;

const page = {
  voices: new Map(),
  controller: null, // AbortController of the request in flight
  player: null,
  reference: null, // { blob, name } chosen or recorded for cloning
  recorder: null,
  audioContext: null,
};

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  const box = $("error");
  const parts = [error.message];
  if (error.code) parts.push(`(${error.code})`);
  if (error.requestId) parts.push(`request ${error.requestId}`);
  box.textContent = parts.join(" ");
  box.hidden = false;
  document.body.dataset.errorCode = error.code || "";
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  delete document.body.dataset.errorCode;
}

// An error from a response: the edge's JSON body {"error": {message, type, code, request_id}} when it has one.
async function responseError(response) {
  const fallback = `HTTP ${response.status} ${response.statusText}`.trim();
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const detail = body && typeof body === "object" && body.error ? body.error : {};
  const error = new Error(detail.message || fallback);
  error.code = detail.code || detail.type || String(response.status);
  error.requestId = detail.request_id || response.headers.get("X-Request-Id") || "";
  return error;
}

// Authorization for an edge started with --auth-token; nothing is sent while the field is empty.
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// ---- voices ----------------------------------------------------------------------------------------------------

async function loadVoices() {
  setState("loading");
  clearError();
  try {
    const response = await fetch("/v1/voices", { headers: { Accept: "application/json", ...authHeaders() } });
    if (!response.ok) throw await responseError(response);
    const body = await response.json();
    fillVoices(body.data || []);
    fillConversions(body.conversion_models || []);
    setStatus(`${page.voices.size} voices.`);
    setState("idle");
  } catch (error) {
    setStatus("Could not load the voices.");
    showError(error);
    setState("error");
  }
}

function fillVoices(voices) {
  const select = $("voice");
  select.replaceChildren();
  page.voices.clear();
  let firstAvailable = null;
  for (const voice of voices) {
    page.voices.set(voice.id, voice);
    const option = document.createElement("option");
    option.value = voice.id;
    const label = voice.name && voice.name !== voice.id ? `${voice.name} (${voice.id})` : voice.id;
    const streams = voice.streams_text_input ? `${label} — streams text input` : label;
    option.textContent = voice.available ? streams : `${streams} — unavailable`;
    option.dataset.available = String(Boolean(voice.available));
    option.dataset.streamsTextInput = String(Boolean(voice.streams_text_input));
    if (!voice.available) option.classList.add("unavailable");
    select.append(option);
    if (firstAvailable === null && voice.available) firstAvailable = voice.id;
  }
  if (firstAvailable !== null) select.value = firstAvailable;
  voiceChanged();
}

function fillConversions(models) {
  const select = $("conversion");
  const chosen = select.value;
  select.replaceChildren(new Option("voice default", ""));
  for (const model of models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id;
    select.append(option);
  }
  if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
}

function voiceChanged() {
  const voice = page.voices.get($("voice").value);
  const notes = [];
  if (voice) {
    if (voice.description) notes.push(voice.description);
    if (voice.language) notes.push(voice.language);
    if (voice.sample_rate) notes.push(`${voice.sample_rate} Hz`);
    if (voice.streams_text_input) notes.push("streams text input: speaks while you type");
    if (voice.default_conversion) notes.push(`converts with ${conversionName(voice.default_conversion)} by default`);
    if (!voice.available) notes.push("unavailable now");
  }
  $("voice-note").textContent = notes.join(" · ");
  $("reference-section").hidden = !(voice && voice.supports_cloning);
}

function conversionName(conversion) {
  if (typeof conversion === "string") return conversion;
  return conversion.model || conversion.id || "a conversion model";
}

// ---- reference clip (upload or record), sent as 16-bit mono WAV ----------------------------------------------------

function audioContext() {
  if (page.audioContext === null) page.audioContext = new AudioContext();
  return page.audioContext;
}

function encodeWav(samples, rate) {
  const bytes = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(bytes);
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([bytes], { type: "audio/wav" });
}

// Browsers record WebM/Opus or MP4, which the gateway need not read: decode here and send plain WAV.
async function asWav(blob) {
  const decoded = await audioContext().decodeAudioData(await blob.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / decoded.numberOfChannels;
  }
  return { wav: encodeWav(mono, decoded.sampleRate), seconds: decoded.duration };
}

async function useReference(blob, name) {
  const preview = $("reference-preview");
  try {
    const { wav, seconds } = await asWav(blob);
    page.reference = { blob: wav, name: name.replace(/\.[^.]*$/, "") + ".wav" };
    $("reference-status").textContent = `Reference: ${name}, ${seconds.toFixed(1)} s.`;
  } catch {
    // Not decodable here: send the file as it is and let the gateway judge it.
    page.reference = { blob, name };
    $("reference-status").textContent = `Reference: ${name} (sent as is).`;
  }
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(page.reference.blob);
  preview.hidden = false;
}

async function startRecording() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(new Error(`Microphone not available: ${error.message}`));
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", () => {
    stream.getTracks().forEach((track) => track.stop());
    useReference(new Blob(chunks, { type: recorder.mimeType }), "recording");
  });
  recorder.start();
  page.recorder = recorder;
  $("record").disabled = true;
  $("record-stop").disabled = false;
  $("reference-status").textContent = "Recording…";
}

function stopRecording() {
  if (page.recorder && page.recorder.state !== "inactive") page.recorder.stop();
  page.recorder = null;
  $("record").disabled = false;
  $("record-stop").disabled = true;
}

// ---- streaming playback ----------------------------------------------------------------------------------------

// Turns s16le bytes into AudioBuffers played back to back on one AudioContext clock: each starts where the
// previous one ends, so the pieces join without gaps. A read may end in the middle of a sample; that byte waits
// for the next read.
class StreamPlayer {
  // `after`: a player whose audio this one follows (the previous typed turn), or null.
  constructor(context, rate, onSamples, after = null) {
    this.context = context;
    this.after = after;
    this.stopped = false;
    this.rate = rate;
    this.onSamples = onSamples;
    this.carry = null;
    this.next = 0; // where the next buffer starts on the context clock
    this.chainStart = 0; // start of the current gapless run of buffers
    this.chainSamples = 0; // samples scheduled in that run
    this.totalSamples = 0;
    this.firstStart = null;
    this.scheduledSeconds = 0;
    this.underruns = 0;
    this.sources = new Set();
    this.placed = []; // [start, duration] of every buffer, on the context clock
    this.ended = false;
    this.drained = null;
    this.resolveDrained = null;
  }

  push(bytes) {
    let data = bytes;
    if (this.carry !== null) {
      data = new Uint8Array(bytes.length + 1);
      data[0] = this.carry;
      data.set(bytes, 1);
      this.carry = null;
    }
    const even = data.length - (data.length % 2);
    if (even < data.length) this.carry = data[data.length - 1];
    if (even === 0) return 0;
    const view = new DataView(data.buffer, data.byteOffset, even);
    const samples = new Float32Array(even / 2);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
    this.schedule(samples);
    this.onSamples(samples);
    return samples.length;
  }

  schedule(samples) {
    const buffer = this.context.createBuffer(1, samples.length, this.rate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    if (this.firstStart === null || this.next < now) {
      // The first buffer, or playback has caught up with the stream: (re)start the chain a little ahead.
      if (this.firstStart !== null) this.underruns += 1;
      const follows = this.after && !this.after.stopped ? this.after.next : 0;
      this.chainStart = Math.max(now + LEAD_S, follows);
      this.chainSamples = 0;
    }
    // Start times come from a sample count, not a running sum of durations, so rounding never accumulates.
    const start = this.chainStart + this.chainSamples / this.rate;
    if (this.firstStart === null) this.firstStart = start;
    source.start(start);
    this.placed.push([start, buffer.duration]);
    this.chainSamples += samples.length;
    this.totalSamples += samples.length;
    this.next = this.chainStart + this.chainSamples / this.rate;
    this.scheduledSeconds = this.totalSamples / this.rate;
    this.sources.add(source);
    source.addEventListener("ended", () => {
      this.sources.delete(source);
      this.checkDrained();
    });
  }

  // Resolves when the stream has ended and the last scheduled buffer has played.
  finish() {
    this.ended = true;
    this.drained = new Promise((resolve) => {
      this.resolveDrained = resolve;
    });
    this.checkDrained();
    return this.drained;
  }

  checkDrained() {
    if (this.ended && this.sources.size === 0 && this.resolveDrained) {
      this.resolveDrained();
      this.resolveDrained = null;
    }
  }

  // Seconds of this stream heard so far (buffers started, each counted up to its length).
  position() {
    const now = this.context.currentTime;
    let heard = 0;
    for (const [start, duration] of this.placed) heard += Math.max(0, Math.min(duration, now - start));
    return heard;
  }

  stop() {
    for (const source of this.sources) {
      source.stop();
      source.disconnect();
    }
    this.sources.clear();
    this.stopped = true;
    this.ended = true;
    this.checkDrained();
  }
}

// ---- waveform --------------------------------------------------------------------------------------------------

class Waveform {
  constructor(canvas) {
    this.canvas = canvas;
    this.reset(16000);
  }

  reset(rate) {
    this.binSize = Math.max(1, Math.round(rate * BIN_S));
    this.mins = [];
    this.maxs = [];
    this.partial = null; // [min, max, count] of the bin being filled
    this.played = 0;
    this.draw();
  }

  add(samples) {
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      if (this.partial === null) this.partial = [s, s, 0];
      if (s < this.partial[0]) this.partial[0] = s;
      if (s > this.partial[1]) this.partial[1] = s;
      this.partial[2] += 1;
      if (this.partial[2] === this.binSize) {
        this.mins.push(this.partial[0]);
        this.maxs.push(this.partial[1]);
        this.partial = null;
      }
    }
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    const style = getComputedStyle(canvas);
    g.clearRect(0, 0, width, height);
    g.fillStyle = style.getPropertyValue("--wave-axis").trim() || "#bbb";
    g.fillRect(0, Math.floor(height / 2), width, 1);
    const bins = this.mins.length;
    const span = Math.max(bins, Math.round(MIN_VIEW_S / BIN_S));
    const playedBins = Math.round(this.played / BIN_S);
    const colour = style.getPropertyValue("--wave").trim() || "#2a6";
    const playedColour = style.getPropertyValue("--wave-played").trim() || "#136";
    for (let x = 0; x < width; x++) {
      const from = Math.floor((x * span) / width);
      const to = Math.min(bins, Math.max(from + 1, Math.floor(((x + 1) * span) / width)));
      if (from >= bins) break;
      let lo = 0;
      let hi = 0;
      for (let b = from; b < to; b++) {
        if (this.mins[b] < lo) lo = this.mins[b];
        if (this.maxs[b] > hi) hi = this.maxs[b];
      }
      const top = Math.round(((1 - hi) / 2) * height);
      const bottom = Math.round(((1 - lo) / 2) * height);
      g.fillStyle = from < playedBins ? playedColour : colour;
      g.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  }
}

// ---- one request -----------------------------------------------------------------------------------------------

const waveform = new Waveform($("waveform"));
let frame = 0;

function animate() {
  if (page.player) waveform.played = page.player.position();
  waveform.draw();
  frame = requestAnimationFrame(animate);
}

function formFields() {
  const form = new FormData();
  form.append("text", $("text").value);
  form.append("voice", $("voice").value);
  form.append("response_format", "pcm");
  const conversion = $("conversion").value;
  if (conversion) form.append("conversion_model", conversion);
  const pitch = Number($("pitch").value);
  if (Number.isFinite(pitch) && pitch !== 0) form.append("pitch_shift", String(pitch));
  const voice = page.voices.get($("voice").value);
  if (page.reference && voice && voice.supports_cloning) {
    form.append("reference", page.reference.blob, page.reference.name);
    const transcript = $("reference-text").value.trim();
    if (transcript) form.append("reference_text", transcript);
  }
  return form;
}

function showMetrics({ ttfaMs, rtf, seconds, rate, requestId }) {
  if (ttfaMs !== undefined) $("ttfa").textContent = ttfaMs === null ? "–" : String(Math.round(ttfaMs));
  if (rtf !== undefined) $("rtf").textContent = rtf === null ? "–" : rtf.toFixed(3);
  if (seconds !== undefined) {
    $("audio-seconds").textContent = seconds === null ? "–" : seconds.toFixed(2);
    document.body.dataset.scheduledSeconds = seconds === null ? "0" : String(seconds);
  }
  if (rate !== undefined) $("sample-rate").textContent = rate === null ? "–" : String(rate);
  if (requestId !== undefined) $("request-id").textContent = requestId || "–";
}

async function speak() {
  stop();
  page.player = null;
  clearError();
  const clicked = performance.now();
  const context = audioContext();
  // The click is the user gesture that lets an AudioContext run.
  await context.resume();
  const controller = new AbortController();
  page.controller = controller;
  showMetrics({ ttfaMs: null, rtf: null, seconds: null, rate: null, requestId: null });
  document.body.dataset.underruns = "0";
  delete document.body.dataset.ttfaMs;
  delete document.body.dataset.streamSeconds;
  $("speak").disabled = true;
  $("stop").disabled = false;
  setState("streaming");
  setStatus("Requesting…");
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(animate);
  let player = null;
  try {
    const response = await fetch("/synthesize/stream", {
      method: "POST",
      body: formFields(),
      headers: authHeaders(),
      signal: controller.signal,
    });
    if (!response.ok) throw await responseError(response);
    const rate = Number(response.headers.get("X-Sample-Rate"));
    if (!Number.isInteger(rate) || rate <= 0) throw new Error("The response has no usable X-Sample-Rate header.");
    showMetrics({ rate, requestId: response.headers.get("X-Request-Id") || "" });
    waveform.reset(rate);
    player = new StreamPlayer(context, rate, (samples) => waveform.add(samples));
    page.player = player;
    const reader = response.body.getReader();
    let firstAudio = null;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (player.push(value) > 0 && firstAudio === null) {
        firstAudio = performance.now();
        showMetrics({ ttfaMs: firstAudio - clicked });
        document.body.dataset.ttfaMs = String(firstAudio - clicked);
        setState("playing");
        setStatus("Playing while the audio streams…");
      }
      if (player.scheduledSeconds > 0) {
        const elapsed = (performance.now() - clicked) / 1000;
        showMetrics({ seconds: player.scheduledSeconds, rtf: elapsed / player.scheduledSeconds });
      }
      document.body.dataset.underruns = String(player.underruns);
    }
    const processing = (performance.now() - clicked) / 1000;
    if (player.scheduledSeconds === 0) throw new Error("The gateway returned no audio.");
    showMetrics({ seconds: player.scheduledSeconds, rtf: processing / player.scheduledSeconds });
    document.body.dataset.streamSeconds = String(processing);
    setStatus("Stream complete; playing the rest…");
    await player.finish();
    if (page.controller !== controller) return; // stopped or replaced meanwhile
    setState("done");
    setStatus(
      player.underruns === 0
        ? "Done."
        : `Done, with ${player.underruns} gap${player.underruns === 1 ? "" : "s"} where the stream fell behind.`,
    );
  } catch (error) {
    if (page.controller !== controller) return;
    if (player) player.stop();
    if (error.name === "AbortError") {
      setState("stopped");
      setStatus("Stopped.");
    } else {
      showError(error);
      setState("error");
      setStatus("The request failed.");
    }
  } finally {
    if (page.controller === controller) {
      page.controller = null;
      $("speak").disabled = false;
      $("stop").disabled = true;
      waveform.played = player ? player.position() : 0;
      waveform.draw();
      cancelAnimationFrame(frame);
    }
  }
}

function stop() {
  for (const turn of typing.turns) turn.controller.abort();
  typing.turns.clear();
  typing.session = null;
  const controller = page.controller;
  if (controller === null) return;
  page.controller = null;
  controller.abort();
  if (page.player) page.player.stop();
  page.player = null;
  cancelAnimationFrame(frame);
  $("speak").disabled = false;
  $("stop").disabled = true;
  setState("stopped");
  setStatus("Stopped.");
}

// ---- speak as I type: text deltas over the WebSocket ---------------------------------------------------------------

// A word is complete once a space or a punctuation mark follows it.
const WORD_END = /[\s.,!?;:…]/;

// Text typed since the last delta -> [the completed words, the unfinished rest]. A delta holds at least one
// non-space character: spaces alone wait for the next word.
function splitTyped(pending) {
  let end = 0;
  for (let i = 0; i < pending.length; i++) if (WORD_END.test(pending[i])) end = i + 1;
  const delta = pending.slice(0, end);
  return delta.trim() ? [delta, pending.slice(end)] : ["", pending];
}

function commonPrefix(a, b) {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n += 1;
  return a.slice(0, n);
}

const typing = {
  sent: "", // the start of the text box already sent; an edit inside it sends the edited text again
  session: null, // the latest turn
  turns: new Set(), // turns still open or playing
};

function typingOn() {
  return $("type-mode").checked;
}

function typedConfig() {
  const config = { voice: $("voice").value, response_format: "pcm" };
  const conversion = $("conversion").value;
  if (conversion) config.conversion_model = conversion;
  const pitch = Number($("pitch").value);
  if (Number.isFinite(pitch) && pitch !== 0) config.pitch_shift = pitch;
  return config;
}

function openTypedTurn() {
  if (page.controller && !page.controller.typed) stop(); // an HTTP stream in flight: typing replaces it
  clearError();
  audioContext().resume();
  const controller = new AbortController();
  controller.typed = true;
  page.controller = controller;
  const previous = typing.session;
  const turn = {
    controller,
    previous,
    next: null,
    queue: [], // messages typed before the socket opened
    pending: [], // audio that waits for the previous turn's audio
    player: null,
    deltas: 0,
    firstDelta: null,
    firstAudio: null,
    ended: false,
    done: false,
    closed: false,
    error: null,
  };
  if (previous) previous.next = turn;
  typing.session = turn;
  typing.turns.add(turn);
  document.body.dataset.typedDeltas = "0";
  delete document.body.dataset.ttfaMs;
  delete document.body.dataset.streamSeconds;
  showMetrics({ ttfaMs: null, rtf: null, seconds: null, rate: null, requestId: null });
  $("stop").disabled = false;
  setState("streaming");
  setStatus("Speaking as you type…");
  const url = new URL("/v1/audio/speech/stream", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const token = $("token").value.trim();
  if (token) url.searchParams.set("token", token);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  turn.socket = socket;
  controller.signal.addEventListener("abort", () => {
    socket.close();
    if (turn.player) turn.player.stop();
  });
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify(typedConfig()));
    for (const message of turn.queue) socket.send(message);
    turn.queue = [];
  });
  socket.addEventListener("message", (event) => typedMessage(turn, event.data));
  socket.addEventListener("close", (event) => typedClosed(turn, event));
  return turn;
}

function typedSend(turn, message) {
  const text = JSON.stringify(message);
  if (turn.socket.readyState === WebSocket.OPEN) turn.socket.send(text);
  else turn.queue.push(text);
}

function sendTypedDelta(text) {
  let turn = typing.session;
  if (!turn || turn.ended) turn = openTypedTurn();
  typedSend(turn, { text });
  turn.deltas += 1;
  if (turn.firstDelta === null) turn.firstDelta = performance.now();
  document.body.dataset.typedDeltas = String(turn.deltas);
}

function syncTyped() {
  const value = $("text").value;
  if (!value.startsWith(typing.sent)) typing.sent = commonPrefix(typing.sent, value);
  return value;
}

function typedInput() {
  if (!typingOn()) return;
  const value = syncTyped();
  const [delta] = splitTyped(value.slice(typing.sent.length));
  if (!delta) return;
  typing.sent += delta;
  sendTypedDelta(delta);
}

// Enter or Speak: the rest of the text goes out and the turn ends (the next word typed starts a new one).
function endTypedTurn() {
  const value = syncTyped();
  const rest = value.slice(typing.sent.length);
  typing.sent = value;
  if (rest.trim()) sendTypedDelta(rest);
  const turn = typing.session;
  if (!turn || turn.ended) return;
  typedSend(turn, { type: "end" });
  turn.ended = true;
  setStatus("Turn sent; speaking…");
}

function typedAudio(turn, bytes) {
  if (turn.previous && !turn.previous.closed) {
    turn.pending.push(bytes); // never over the previous turn's audio
    return;
  }
  if (!turn.player) {
    const after = turn.previous ? turn.previous.player : null;
    turn.player = new StreamPlayer(audioContext(), turn.rate, (samples) => waveform.add(samples), after);
    waveform.reset(turn.rate);
    if (typing.session === turn) page.player = turn.player;
  }
  if (turn.player.push(bytes) > 0 && turn.firstAudio === null) {
    turn.firstAudio = performance.now();
    const ttfa = turn.firstAudio - (turn.firstDelta ?? turn.firstAudio);
    if (typing.session === turn) {
      showMetrics({ ttfaMs: ttfa });
      document.body.dataset.ttfaMs = String(ttfa);
      setState("playing");
    }
  }
  if (typing.session === turn) showMetrics({ seconds: turn.player.scheduledSeconds });
}

function typedMessage(turn, data) {
  if (turn.controller.signal.aborted) return;
  if (typeof data !== "string") {
    typedAudio(turn, new Uint8Array(data));
    return;
  }
  const message = JSON.parse(data);
  if (message.type === "start") {
    turn.rate = message.sample_rate;
    if (typing.session === turn) showMetrics({ rate: turn.rate, requestId: message.request_id || "" });
  } else if (message.type === "done") {
    turn.done = true;
  } else if (message.type === "error") {
    const error = new Error(message.message || "The stream failed.");
    error.code = message.code || String(message.status || "");
    error.requestId = message.request_id || "";
    turn.error = error;
  }
}

async function typedClosed(turn, event) {
  turn.closed = true;
  const next = turn.next;
  if (next && !next.controller.signal.aborted) {
    const waiting = next.pending;
    next.pending = [];
    for (const bytes of waiting) typedAudio(next, bytes);
  }
  if (turn.controller.signal.aborted) return;
  const latest = () => typing.session === turn && page.controller === turn.controller;
  if (turn.error || !turn.done) {
    typing.turns.delete(turn);
    if (turn.player) turn.player.stop();
    if (!latest()) return;
    showError(turn.error || new Error(`The stream closed before it was done (code ${event.code}).`));
    setState("error");
    setStatus("The request failed.");
    turn.ended = true;
    page.controller = null;
    $("stop").disabled = true;
    return;
  }
  if (turn.firstDelta !== null && latest()) {
    document.body.dataset.streamSeconds = String((performance.now() - turn.firstDelta) / 1000);
  }
  if (turn.player) await turn.player.finish();
  typing.turns.delete(turn);
  if (!latest() || turn.controller.signal.aborted) return;
  page.controller = null;
  $("stop").disabled = true;
  setState("done");
  setStatus("Done.");
}

// ---- wiring ----------------------------------------------------------------------------------------------------

$("speak-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (typingOn()) endTypedTurn();
  else speak();
});
$("text").addEventListener("input", typedInput);
$("text").addEventListener("keydown", (event) => {
  if (!typingOn() || event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  endTypedTurn();
});
$("type-mode").addEventListener("change", () => {
  if (typingOn()) typing.sent = "";
  else endTypedTurn();
});
$("stop").addEventListener("click", stop);
$("voice").addEventListener("change", voiceChanged);
$("reference-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) useReference(file, file.name);
});
$("record").addEventListener("click", startRecording);
$("record-stop").addEventListener("click", stopRecording);
window.addEventListener("resize", () => waveform.draw());
$("token").value = sessionStorage.getItem("voice-edge-token") || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem("voice-edge-token", $("token").value.trim());
  loadVoices();
});

// The player is exposed so a test can feed it bytes split at awkward places on an OfflineAudioContext; splitTyped so
// a test can check how typed text becomes deltas.
window.voicePage = Object.freeze({ StreamPlayer, splitTyped });

loadVoices();

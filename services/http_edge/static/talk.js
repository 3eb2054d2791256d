// The talk page: microphone -> /v1/talk (PCM16 at 16 kHz) -> transcripts and spoken replies.
// Hooks for tests on <body>: data-state (loading, idle, connecting, listening, stopped, error),
// data-final-transcripts (count), data-replies (replies fully received), data-reply-seconds (their audio, summed),
// data-last-transcript.

const $ = (id) => document.getElementById(id);
const TARGET_RATE = 16000;
const LEAD_S = 0.05;

const talk = {
  socket: null,
  stream: null,
  context: null,
  node: null,
  source: null,
  finals: 0,
  replies: 0,
  replySeconds: 0,
  player: null,
  turns: new Map(), // utterance -> {you, reply} list items
};

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function token() {
  return $("token").value.trim();
}

async function loadVoices() {
  setState("loading");
  try {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const response = await fetch("/v1/voices", { headers });
    if (!response.ok) throw new Error(`voices: HTTP ${response.status}`);
    const body = await response.json();
    const select = $("voice");
    select.replaceChildren();
    for (const voice of body.data || []) {
      const option = new Option(voice.available ? voice.id : `${voice.id} — unavailable`, voice.id);
      select.append(option);
    }
    const preferred = [...select.options].find((option) => option.value === "joe");
    if (preferred) select.value = "joe";
    setStatus("Ready. Start the microphone and speak.");
    setState("idle");
  } catch (error) {
    setStatus("Could not load the voices.");
    showError(String(error.message || error));
    setState("error");
  }
}

// Turns blocks of float samples at `fromRate` into PCM16 at 16 kHz: each output sample averages the input samples
// of its period (a box filter, enough against aliasing for speech recognition), carrying the remainder over.
class Downsampler {
  constructor(fromRate) {
    this.ratio = fromRate / TARGET_RATE;
    this.position = 0; // input samples consumed into the current output sample (fractional)
    this.sum = 0;
    this.count = 0;
  }

  push(samples) {
    const out = [];
    for (let i = 0; i < samples.length; i++) {
      this.sum += samples[i];
      this.count += 1;
      this.position += 1;
      if (this.position >= this.ratio) {
        this.position -= this.ratio;
        const value = Math.max(-1, Math.min(1, this.sum / this.count));
        out.push(Math.round(value * 32767));
        this.sum = 0;
        this.count = 0;
      }
    }
    return Int16Array.from(out);
  }
}

// Plays PCM16 replies back to back on one AudioContext clock; replies queue after each other.
class ReplyPlayer {
  constructor(context) {
    this.context = context;
    this.next = 0;
    this.rate = 24000;
    this.carry = null;
    this.sources = new Set();
  }

  start(rate) {
    this.rate = rate;
    this.carry = null;
  }

  push(buffer) {
    let bytes = new Uint8Array(buffer);
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    const even = bytes.length - (bytes.length % 2);
    if (even < bytes.length) this.carry = bytes[bytes.length - 1];
    if (even === 0 || !this.rate) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, even);
    const samples = new Float32Array(even / 2);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
    const audio = this.context.createBuffer(1, samples.length, this.rate);
    audio.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = audio;
    source.connect(this.context.destination);
    const start = Math.max(this.next, this.context.currentTime + LEAD_S);
    source.start(start);
    this.next = start + audio.duration;
    this.sources.add(source);
    source.addEventListener("ended", () => this.sources.delete(source));
  }

  stop() {
    for (const source of this.sources) {
      source.stop();
      source.disconnect();
    }
    this.sources.clear();
    this.next = 0;
  }
}

function turn(utterance) {
  let entry = talk.turns.get(utterance);
  if (!entry) {
    const you = document.createElement("li");
    you.className = "you";
    you.dataset.utterance = String(utterance);
    $("turns").append(you);
    entry = { you, reply: null };
    talk.turns.set(utterance, entry);
  }
  return entry;
}

function replyItem(utterance) {
  const entry = turn(utterance);
  if (!entry.reply) {
    entry.reply = document.createElement("li");
    entry.reply.className = "reply";
    entry.reply.dataset.utterance = String(utterance);
    entry.reply.append(document.createElement("span"));
    entry.you.after(entry.reply);
  }
  return entry.reply;
}

function formatTiming(timing) {
  const parts = [
    ["end of speech → transcript", timing.end_of_speech_to_final_ms],
    ["transcript → reply text", timing.final_to_first_text_ms],
    ["transcript → reply audio", timing.final_to_first_audio_ms],
    ["end of speech → reply audio", timing.end_of_speech_to_first_audio_ms],
    ["total", timing.total_ms],
  ];
  return parts
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([name, value]) => `${name} ${Math.round(value)} ms`)
    .join(" · ");
}

function onMessage(event) {
  if (typeof event.data !== "string") {
    talk.player.push(event.data);
    return;
  }
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "ready":
      setState("listening");
      setStatus(`Listening (reply: ${message.reply}). Speak, then pause.`);
      break;
    case "transcript":
      if (message.final) {
        turn(message.utterance).you.textContent = message.text;
        $("interim").textContent = "";
        talk.finals += 1;
        document.body.dataset.finalTranscripts = String(talk.finals);
        document.body.dataset.lastTranscript = message.text;
      } else {
        $("interim").textContent = message.text ? `… ${message.text}` : "";
      }
      break;
    case "reply_start": {
      talk.player.start(message.sample_rate);
      const span = replyItem(message.utterance).firstChild;
      if (message.text) span.textContent = message.text;
      break;
    }
    case "reply_text":
      replyItem(message.utterance).firstChild.textContent += message.delta;
      break;
    case "reply_end": {
      const item = replyItem(message.utterance);
      item.firstChild.textContent = message.text;
      const timing = document.createElement("span");
      timing.className = "timing";
      timing.textContent = formatTiming(message.timing);
      item.append(timing);
      talk.replies += 1;
      talk.replySeconds += message.audio_seconds;
      document.body.dataset.replies = String(talk.replies);
      document.body.dataset.replySeconds = talk.replySeconds.toFixed(3);
      break;
    }
    case "error":
      showError(`${message.message} (${message.code}, HTTP ${message.status})`);
      if (message.utterance === undefined) setState("error");
      break;
    case "done":
      setStatus("Session ended.");
      break;
    default:
      break;
  }
}

async function start(event) {
  event.preventDefault();
  clearError();
  setState("connecting");
  setStatus("Opening the microphone…");
  $("start").disabled = true;
  $("stop").disabled = false;
  try {
    talk.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    talk.context = new AudioContext();
    await talk.context.resume();
    await talk.context.audioWorklet.addModule("/static/talk-worklet.js");
    talk.player = new ReplyPlayer(talk.context);
    const config = { voice: $("voice").value, sample_rate: TARGET_RATE };
    if ($("reply").value) config.reply = $("reply").value;
    if ($("recognition-model").value.trim()) config.recognition_model = $("recognition-model").value.trim();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = token() ? `?token=${encodeURIComponent(token())}` : "";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/talk${query}`);
    socket.binaryType = "arraybuffer";
    talk.socket = socket;
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", (closed) => {
      if (talk.socket === socket) stopCapture();
      if (document.body.dataset.state !== "error") {
        setState(closed.code >= 4000 ? "error" : "stopped");
        if (closed.code >= 4000 && $("error").hidden) showError(`The session ended (code ${closed.code}).`);
        else if (closed.code !== 1000) setStatus("The connection closed.");
      }
      $("start").disabled = false;
      $("stop").disabled = true;
    });
    await new Promise((resolve, reject) => {
      socket.addEventListener("open", resolve, { once: true });
      socket.addEventListener("error", () => reject(new Error("could not connect to /v1/talk")), { once: true });
    });
    socket.send(JSON.stringify(config));
    const downsampler = new Downsampler(talk.context.sampleRate);
    talk.source = talk.context.createMediaStreamSource(talk.stream);
    talk.node = new AudioWorkletNode(talk.context, "talk-capture");
    talk.node.port.onmessage = (message) => {
      const pcm = downsampler.push(message.data);
      if (pcm.length && socket.readyState === WebSocket.OPEN) socket.send(pcm.buffer);
    };
    talk.source.connect(talk.node);
  } catch (error) {
    stopCapture();
    showError(String(error.message || error));
    setStatus("Could not start.");
    setState("error");
    $("start").disabled = false;
    $("stop").disabled = true;
  }
}

function stopCapture() {
  if (talk.source) talk.source.disconnect();
  if (talk.node) talk.node.port.onmessage = null;
  if (talk.stream) for (const track of talk.stream.getTracks()) track.stop();
  talk.source = null;
  talk.node = null;
  talk.stream = null;
}

function stop() {
  stopCapture();
  if (talk.player) talk.player.stop();
  if (talk.socket && talk.socket.readyState === WebSocket.OPEN) talk.socket.close(1000);
  talk.socket = null;
  setState("stopped");
  setStatus("Stopped.");
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("talk-form").addEventListener("submit", start);
$("stop").addEventListener("click", stop);
$("token").value = sessionStorage.getItem("voice-edge-token") || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem("voice-edge-token", token());
  loadVoices();
});
window.talkPage = Object.freeze({ Downsampler });
loadVoices();

// vcstream browser client: voice library (REST), signalling (WebSocket, protocol v1, see
// vcstream/service/signalling.py), one RTCPeerConnection per call, level meters and live figures.
// Plain ES module, no build step.

const PROTOCOL = 1;
// reconnecting after a lost connection: never gives up while the tab is open, and the longest pause
// (with its jitter) stays under 2 s, so a server that is back is reached within 2 s
const RECONNECT_FIRST_DELAY_MS = 250;
const RECONNECT_MAX_DELAY_MS = 1500;
// waiting for a place on a full server: the server's retry_after_s, growing, with jitter so that
// waiting pages do not all come back at once
const FULL_FIRST_DELAY_MS = 1000;
const FULL_MAX_DELAY_MS = 30000;
// how often the voice list is refreshed while the page is visible (voices are added and deleted elsewhere)
const VOICES_REFRESH_MS = 30000;
const RECORD_MAX_S = 15;
// moving a call off a draining server: pauses between tries that reached the draining server again
const MOVE_RETRY_MS = 250;
const MOVE_RETRY_MAX_MS = 2000;
const STATS_INTERVAL_MS = 1000;
// a level above this (RMS, full scale 1) counts as sound for "first audio"
const SOUND_RMS = 0.003;

// the access token in the token mode: #token= in the page's address (a fragment never reaches a
// server, so the token stays out of access logs and Referer headers), or set by the embedding site
const ACCESS_TOKEN = new URLSearchParams(location.hash.slice(1)).get("token") || window.VCSTREAM_TOKEN || null;

const $ = (id) => document.getElementById(id);
const ui = {
  firstSteps: $("first-steps"),
  voicePlay: $("voice-play"),
  ttfa: $("stat-ttfa"),
  serverState: $("server-state"),
  banner: $("engine-banner"),
  voiceSelect: $("voice-select"),
  voiceDelete: $("voice-delete"),
  start: $("start-button"),
  callStatus: $("call-status"),
  meterIn: $("meter-in"),
  meterOut: $("meter-out"),
  audio: $("remote-audio"),
  uploadForm: $("upload-form"),
  voiceName: $("voice-name"),
  voiceFile: $("voice-file"),
  record: $("record-button"),
  uploadStatus: $("upload-status"),
  settingsFields: $("settings-fields"),
};

// What the page knows; also readable as window.vcstream for diagnostics (and the browser tests).
const state = {
  ready: null, // the server's "ready" message
  settings: {},
  voices: [],
  callWanted: false, // the user pressed Start and not Stop
  callState: "idle",
  timeline: {}, // performance.now() at: click, mic, offer, answer, connected, firstAudio
  serverStats: null,
  clientStats: null,
  micStream: null,
  remoteStream: null,
  errors: [],
  // moving the call off a draining server: null, or { status: "moving"|"moved"|"stayed", reason }
  move: null,
  moves: 0, // calls moved to another server so far
  waiting: null, // null, or { retryInMs, attempts } while the server is full and the call waits for a place
  draining: false, // the server announced it is going away
};
window.vcstream = state;

// -- small helpers ---------------------------------------------------------------------------------

function setCallState(name, text) {
  state.callState = name;
  ui.callStatus.dataset.state = name;
  ui.callStatus.textContent = text;
  const active = ["starting", "connecting", "live", "reconnecting", "waiting", "moving"].includes(name);
  ui.start.textContent = active ? "Stop" : "Start microphone";
  ui.start.dataset.action = active ? "stop" : "start";
  ui.start.classList.toggle("danger", active);
}

function setServerState(name, text) {
  ui.serverState.dataset.state = name;
  ui.serverState.textContent = text;
}

function fmt(value, unit, digits = 0) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : `${Number(value).toFixed(digits)} ${unit}`;
}

function authHeaders() {
  return ACCESS_TOKEN ? { Authorization: `Bearer ${ACCESS_TOKEN}` } : {};
}

async function apiJson(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body?.message || `${response.status} ${response.statusText}`);
  }
  return body;
}

// -- voices ----------------------------------------------------------------------------------------

function chosenVoice() {
  return ui.voiceSelect.value || null;
}

// Only a voice this browser chose (or just added) is selected: a shared library holds other
// visitors' voices, and none of them is picked for a newcomer.
function renderVoices(voices, select) {
  state.voices = voices;
  const keep = select || chosenVoice() || localStorage.getItem("vcstream.voice");
  const known = keep && voices.some((v) => v.id === keep);
  ui.voiceSelect.replaceChildren();
  if (!known) {
    // nothing chosen yet: a prompt, not somebody's voice
    const placeholder = new Option(voices.length ? "Choose a voice…" : "No voices yet: add one first", "");
    placeholder.disabled = true;
    ui.voiceSelect.add(placeholder);
  }
  for (const voice of voices) {
    ui.voiceSelect.add(new Option(`${voice.name} (${voice.duration_s.toFixed(1)} s)`, voice.id));
  }
  ui.voiceSelect.value = known ? keep : "";
  ui.voiceDelete.disabled = ui.voicePlay.disabled = !chosenVoice();
  showFirstSteps(!voices.length);
}

// the first screen of an empty library: how to begin (add or record a voice) comes first
function showFirstSteps(empty) {
  ui.firstSteps.hidden = !empty;
  document.body.classList.toggle("no-voices", empty);
}

let voicesRequest = 0;

async function loadVoices(select) {
  // only the newest listing renders: an older response arriving late must not hide a new voice
  const request = ++voicesRequest;
  try {
    const body = await apiJson("/api/voices");
    if (request === voicesRequest) renderVoices(body.voices, select);
  } catch (err) {
    ui.uploadStatus.textContent = `Could not load the voices: ${err.message}`;
  }
}

async function uploadVoice(blob, filename, name) {
  const form = new FormData();
  form.append("name", name);
  form.append("file", blob, filename);
  ui.uploadStatus.dataset.state = "busy";
  ui.uploadStatus.textContent = "Uploading and analysing the voice…";
  try {
    const voice = await apiJson("/api/voices", { method: "POST", body: form });
    state.errors = state.errors.filter((e) => e.source !== "upload");
    const notes = voice.notices.length ? ` (${voice.notices.join("; ")})` : "";
    // the list first, then the message: once "Added" shows, the voice is in the selector
    await loadVoices(voice.id);
    ui.uploadStatus.dataset.state = "ok";
    ui.uploadStatus.textContent = `Added “${voice.name}”, ${voice.duration_s.toFixed(1)} s${notes}.`;
    onVoiceChosen();
    return true;
  } catch (err) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = `Not added: ${err.message}. Your name and file are kept: fix and upload again.`;
    return false;
  }
}

ui.uploadForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const file = ui.voiceFile.files[0];
  const name = ui.voiceName.value.trim() || file?.name.replace(/\.[^.]+$/, "") || "";
  if (!file) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = "Choose a recording first (or record one in the page).";
    return;
  }
  // the inputs are cleared only once the voice was added: a failed upload keeps them for another try
  uploadVoice(file, file.name, name).then((added) => added && ui.uploadForm.reset());
});

ui.voiceDelete.addEventListener("click", async () => {
  const id = chosenVoice();
  const voice = state.voices.find((v) => v.id === id);
  if (!voice || !confirm(`Delete the voice “${voice.name}” from the library?`)) return;
  try {
    await apiJson(`/api/voices/${id}`, { method: "DELETE" });
    await loadVoices();
  } catch (err) {
    ui.uploadStatus.textContent = `Not deleted: ${err.message}`;
  }
});

// play the chosen voice's recording before using it (fetched with the access token, if any)
ui.voicePlay.addEventListener("click", async () => {
  const id = chosenVoice();
  if (!id) return;
  try {
    const response = await fetch(`/api/voices/${id}/audio`, { headers: authHeaders() });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const player = new Audio(URL.createObjectURL(await response.blob()));
    player.onended = () => URL.revokeObjectURL(player.src);
    await player.play();
  } catch (err) {
    ui.uploadStatus.textContent = `Could not play the voice: ${err.message}`;
  }
});

// voices deleted (or added) elsewhere: the list is refreshed when the page is looked at again
function refreshVoicesWhenSeen() {
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && loadVoices());
  window.addEventListener("focus", () => loadVoices());
  setInterval(() => document.visibilityState === "visible" && loadVoices(), VOICES_REFRESH_MS);
}

function onVoiceChosen() {
  const id = chosenVoice();
  ui.voiceDelete.disabled = ui.voicePlay.disabled = !id;
  if (!id) return;
  localStorage.setItem("vcstream.voice", id);
  if (signalling.isReady()) signalling.send("voice", { voice: id });
}
ui.voiceSelect.addEventListener("change", onVoiceChosen);

// -- recording a reference in the page -------------------------------------------------------------

let recorder = null;
ui.record.addEventListener("click", async () => {
  if (recorder) {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } });
  } catch (err) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = micErrorText(err);
    return;
  }
  const chunks = [];
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t));
  recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  const started = performance.now();
  const ticker = setInterval(() => {
    const left = RECORD_MAX_S - (performance.now() - started) / 1000;
    ui.uploadStatus.textContent = `Recording… speak now (${Math.max(0, left).toFixed(0)} s left, press Stop to finish)`;
    if (left <= 0) recorder?.stop();
  }, 250);
  recorder.onstop = () => {
    clearInterval(ticker);
    stream.getTracks().forEach((track) => track.stop());
    const mime = recorder.mimeType || "audio/webm";
    recorder = null;
    ui.record.textContent = "Record in the page";
    const extension = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
    const name = ui.voiceName.value.trim() || `Recording ${new Date().toLocaleTimeString()}`;
    uploadVoice(new Blob(chunks, { type: mime }), `recording.${extension}`, name);
  };
  recorder.start(250);
  ui.record.textContent = "Stop recording";
  ui.uploadStatus.dataset.state = "busy";
});

// -- settings --------------------------------------------------------------------------------------

function renderSettings(schema, values) {
  ui.settingsFields.replaceChildren();
  for (const [name, spec] of Object.entries(schema)) {
    const id = `setting-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    const shown = document.createElement("output");
    const describe = (value) => (spec.unit === "s" ? `${Math.round(value * 1000)} ms` : `${value}`);
    // the server offers a few values (its batches share shapes): a list; otherwise a slider
    const input = spec.choices ? document.createElement("select") : document.createElement("input");
    if (spec.choices) {
      for (const choice of spec.choices) input.append(new Option(describe(choice), choice));
      input.value = values[name] ?? spec.default;
    } else {
      Object.assign(input, { type: "range", min: spec.min, max: spec.max, step: spec.step, value: values[name] ?? spec.default });
    }
    input.id = id;
    input.dataset.setting = name;
    if (spec.help) input.title = spec.help; // what the setting trades off, from the engine's declaration
    const show = () => {
      shown.textContent = spec.choices ? "" : describe(input.value);
    };
    show();
    label.append(`${spec.label || name} `, shown);
    input.addEventListener("input", show);
    input.addEventListener("change", () => {
      const value = spec.type === "integer" ? parseInt(input.value, 10) : spec.type === "number" ? parseFloat(input.value) : input.value;
      state.settings = { ...state.settings, [name]: value };
      if (signalling.isReady()) signalling.send("settings", { settings: { [name]: value } });
    });
    ui.settingsFields.append(label, input);
  }
}

// -- signalling ------------------------------------------------------------------------------------

class Signalling {
  // handlers: where this connection's messages and its close go (the page's by default; a call
  // being moved to another server has its own until the move completes)
  // reserve: the connection is opened to call at once, so the server holds a place from hello
  constructor({ onMessage = handleMessage, onClosed = onSignallingClosed, reserve = false } = {}) {
    this.reserve = reserve;
    this.onMessage = onMessage;
    this.onClosed = onClosed;
    this.ws = null;
    this.attempts = 0;
    this.timer = null;
    this.ready = false;
    this.readyWaiters = [];
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  isReady() {
    return this.ready && this.ws?.readyState === WebSocket.OPEN;
  }

  // a place is held from hello when the connection is for a call about to start
  helloFields() {
    const fields = this.reserve || state.callWanted ? { reserve: true } : {};
    return ACCESS_TOKEN ? { ...fields, token: ACCESS_TOKEN } : fields;
  }

  connect() {
    clearTimeout(this.timer);
    this.ready = false;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => this.send("hello", this.helloFields());
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ready = false;
      this.onClosed(event);
    };
  }

  // resolves once "ready" arrived on the current connection (bounded by timeoutMs)
  whenReady(timeoutMs = 10000) {
    if (this.isReady()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the server did not answer")), timeoutMs);
      this.readyWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  markReady() {
    this.ready = true;
    this.attempts = 0;
    this.fullAttempts = 0;
    const waiters = this.readyWaiters.splice(0);
    waiters.forEach((wake) => wake());
  }

  send(type, fields = {}) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ v: PROTOCOL, type, ...fields }));
    }
  }

  // reconnect after a growing pause with jitter; never gives up (the pause stays under 2 s)
  reconnectLater() {
    this.attempts += 1;
    return this.connectAfter(backoff(RECONNECT_FIRST_DELAY_MS, RECONNECT_MAX_DELAY_MS, this.attempts));
  }

  // a full server: wait at least what it asked for, longer each time, with jitter
  retryWhenFull(retryAfterS) {
    this.fullAttempts = (this.fullAttempts ?? 0) + 1;
    const grown = backoff(FULL_FIRST_DELAY_MS, FULL_MAX_DELAY_MS, this.fullAttempts);
    this.fullDelay = Math.max(grown, (retryAfterS ?? 0) * 1000 * (0.8 + 0.4 * Math.random()));
    return this.fullDelay;
  }

  connectAfter(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  // leave on purpose: the server answers "bye" and closes; a fresh connection follows
  bye() {
    this.send("bye");
  }
}
let signalling = new Signalling();

// the attempt-th pause of a backoff: doubling from first up to max, then scaled by 0.5..1 (jitter)
function backoff(first, max, attempt) {
  return Math.min(max, first * 2 ** (attempt - 1)) * (0.5 + 0.5 * Math.random());
}

function handleMessage(message) {
  switch (message.type) {
    case "ready":
      state.ready = message;
      state.settings = { ...message.settings, ...state.settings };
      renderSettings(message.settings_schema, state.settings);
      renderVoices(message.voices);
      showEngine(message.engine);
      setServerState("ready", "Connected");
      state.draining = false;
      signalling.markReady();
      break;
    case "answer":
      call?.onAnswer(message.sdp);
      break;
    case "ice":
      call?.onRemoteCandidate(message);
      break;
    case "stats":
      if (!call) break; // a late report of a call that ended: its figures stay cleared
      state.serverStats = message;
      renderStats();
      renderNetwork(message);
      renderSimilarity(message);
      break;
    case "voice":
      if (state.callState === "live") ui.callStatus.textContent = `Live: you sound like ${message.name}.`;
      break;
    case "settings":
      state.settings = { ...message.settings };
      break;
    case "error":
      onServerError(message);
      break;
    case "warning":
      if (message.code === "minutes_ending") {
        ui.callStatus.textContent = `Your plan's minutes end in ${Math.round(message.seconds_left)} s; the call stops then.`;
      }
      break;
    case "draining":
      onDraining(message.grace_s);
      break;
    case "bye":
    case "state":
    default:
      break;
  }
}

function onServerError(error) {
  state.errors.push(error);
  if (error.code === "server_full") {
    waitForPlace(error.retry_after_s);
    return;
  }
  const messages = {
    server_draining: "The server is restarting. Reconnecting shortly…",
    server_not_ready: "The server is still starting. Retrying shortly…",
  };
  if (error.code in messages) {
    setServerState("full", error.code === "server_full" ? "Server full" : "Unavailable");
    if (state.callWanted) setCallState("reconnecting", messages[error.code]);
    else ui.callStatus.textContent = messages[error.code];
    return;
  }
  if (error.code in REFUSALS) {
    refuse(error);
    return;
  }
  if (error.code === "timeout" && !state.callWanted) {
    // the server closes connections left idle; the next Start connects again
    state.idle = true;
    return;
  }
  if (error.code === "voice_not_found" || error.code === "voice_required") {
    loadVoices();
  }
  if (!error.fatal) {
    ui.callStatus.textContent = `Server: ${error.message}`;
    return;
  }
  if (state.callWanted) setCallState("reconnecting", `Server: ${error.message}. Reconnecting…`);
}

function onSignallingClosed(event) {
  const leaving = state.closingOnPurpose;
  state.closingOnPurpose = false;
  if (call) {
    call.close();
    call = null;
  }
  if (state.refused === "unauthorized") return; // the same token would be refused again
  if (leaving) {
    // we said bye: get a fresh connection for the next call without fuss
    signalling.connect();
    return;
  }
  if (state.idle && !state.callWanted) {
    setServerState("idle", "Idle");
    return;
  }
  clearFigures();
  if (signalling.fullDelay) {
    // refused for lack of room: the waiting state says so; the next try comes after the full backoff
    signalling.connectAfter(signalling.fullDelay);
    signalling.fullDelay = null;
    if (state.callWanted) resumeCallWhenReady();
    return;
  }
  signalling.reconnectLater();
  state.reconnectAttempts = signalling.attempts; // diagnostics (and the browser tests)
  if (state.draining) setServerState("draining", "Restarting");
  else setServerState("down", "Reconnecting…");
  if (state.callWanted) {
    const why = state.draining ? "The server restarted." : "Connection lost.";
    setCallState("reconnecting", `${why} Reconnecting…`);
    resumeCallWhenReady();
  }
}

async function resumeCallWhenReady() {
  try {
    await signalling.whenReady(FULL_MAX_DELAY_MS * 2);
  } catch {
    return; // the next close schedules another attempt
  }
  if (state.callWanted && !call) await placeCall();
}

// The server is full: the call waits for a place with the microphone off (nothing is sent, and the
// browser's recording indicator goes out), and the connection is tried again with backoff.
function waitForPlace(retryAfterS) {
  const delay = signalling.retryWhenFull(retryAfterS);
  state.waiting = { retryInMs: delay, attempts: signalling.fullAttempts };
  setServerState("full", "Server full");
  const seconds = Math.max(1, Math.round(delay / 1000));
  if (state.callWanted) {
    closeMicrophone();
    setCallState(
      "waiting",
      `All places are taken. You are waiting for one (trying again in ${seconds} s); your microphone is off until then.`,
    );
  } else {
    ui.callStatus.textContent = `All places are taken right now; trying again in ${seconds} s.`;
  }
}

// refusals that trying again does not cure: the call ends with the reason in plain words
const REFUSALS = {
  unauthorized: "This page is not signed in to the voice service (its access token is missing or has expired). Reload the page from the site that embeds it.",
  call_limit: "Your plan's calls are all in use. End another call, then press Start again.",
  minutes_used_up: "Your plan's minutes for this month are used up.",
};

function refuse(error) {
  state.refused = error.code;
  if (error.code === "unauthorized") setServerState("down", "Not signed in");
  if (state.callWanted) stopCall(REFUSALS[error.code]);
  else ui.callStatus.textContent = REFUSALS[error.code];
}

// SIGTERM on the server: said at once; a call is moved to another server (or ends with a reason)
function onDraining(graceS) {
  state.draining = true;
  setServerState("draining", "Restarting");
  if (call) moveCall(graceS);
  else ui.callStatus.textContent = "This server is restarting; the page reconnects by itself.";
}

// What the engine in use means for the listener, in plain words; the server's technical note (CUDA,
// model cache...) sits behind "Details".
function engineNotice(engine) {
  if (engine.overflow) return "The server is busy, so your call uses a simpler voice engine: the voice sounds less natural than usual.";
  if (engine.cpu_fallback) return "The voice engine runs in a simpler mode right now: the converted voice sounds less like the chosen voice than usual.";
  return "Test mode: your own voice comes back unchanged.";
}

function showEngine(engine) {
  if (!engine) return;
  ui.banner.hidden = !engine.cpu_fallback && !engine.overflow && engine.name !== "passthrough";
  ui.banner.dataset.kind = engine.overflow ? "overflow" : engine.cpu_fallback ? "cpu" : engine.name;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Details";
  details.append(summary, `${engine.note}.`);
  ui.banner.replaceChildren(`${engineNotice(engine)} `, details);
}

// -- the call --------------------------------------------------------------------------------------

let call = null;

class Call {
  // link: the signalling connection of this call; iceServers: from that connection's "ready";
  // onState: instead of the page's reaction to connection states (a call being moved in the
  // background), and then its audio is not played until attach()
  constructor(micStream, { link = signalling, iceServers = state.ready?.ice_servers, onState = null } = {}) {
    this.link = link;
    this.onState = onState;
    this.attached = !onState;
    this.stream = null;
    this.pendingCandidates = [];
    this.pc = new RTCPeerConnection({ iceServers: iceServers || [], bundlePolicy: "max-bundle" });
    for (const track of micStream.getAudioTracks()) this.pc.addTrack(track, micStream);
    this.pc.ontrack = (event) => {
      this.stream = event.streams[0] || new MediaStream([event.track]);
      if (this.attached) this.attach();
    };
    this.pc.onicecandidate = (event) => {
      const c = event.candidate;
      this.link.send("ice", { candidate: c ? c.candidate : null, sdpMLineIndex: c?.sdpMLineIndex ?? 0 });
    };
    this.pc.onconnectionstatechange = () => {
      const value = this.pc.connectionState;
      if (this.onState) this.onState(value);
      else this.onConnectionState(value);
    };
    this.statsTimer = setInterval(() => this.sampleStats(), STATS_INTERVAL_MS);
    this.last = null;
  }

  // play this call's audio (and meter it): the page's call from now on
  attach() {
    this.attached = true;
    this.onState = null;
    if (!this.stream) return;
    state.remoteStream = this.stream;
    ui.audio.srcObject = this.stream;
    ui.audio.play().catch(() => {});
    meters.watch("out", this.stream);
  }

  async offer(voice) {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    state.timeline.offer = performance.now();
    this.link.send("offer", { sdp: this.pc.localDescription.sdp, voice, settings: state.settings });
  }

  async onAnswer(sdp) {
    await this.pc.setRemoteDescription({ type: "answer", sdp });
    state.timeline.answer = performance.now();
    for (const candidate of this.pendingCandidates.splice(0)) await this.addCandidate(candidate);
  }

  async onRemoteCandidate(message) {
    if (message.candidate === null) return; // the server gathered everything: nothing to do
    if (!this.pc.remoteDescription) this.pendingCandidates.push(message);
    else await this.addCandidate(message);
  }

  async addCandidate(message) {
    try {
      await this.pc.addIceCandidate({ candidate: message.candidate, sdpMLineIndex: message.sdpMLineIndex });
    } catch (err) {
      console.warn("ICE candidate refused", err);
    }
  }

  onConnectionState(value) {
    if (value === "connected") {
      state.timeline.connected ??= performance.now();
      const voice = state.voices.find((v) => v.id === chosenVoice());
      setCallState("live", `Live${voice ? `: you sound like ${voice.name}` : ""}.`);
    } else if (value === "failed") {
      // ICE/DTLS gave up: start over on a fresh connection
      setCallState("reconnecting", "The media connection failed. Reconnecting…");
      state.closingOnPurpose = false;
      signalling.ws?.close();
    } else if (value === "disconnected") {
      setCallState("connecting", "Connection interrupted, waiting for it to recover…");
    }
  }

  async sampleStats() {
    if (call !== this) return; // a call being moved in: its figures are not the page's yet
    let report;
    try {
      report = await this.pc.getStats();
    } catch {
      return;
    }
    if (call !== this) return; // the call ended while its report was gathered: no figures come back
    const now = performance.now();
    const figures = { at: now };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        Object.assign(figures, {
          jitterIn: s.jitter * 1000,
          lost: s.packetsLost,
          received: s.packetsReceived,
          bytesIn: s.bytesReceived,
          jitterBufferMs: s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : null,
          concealed: s.concealedSamples,
          samples: s.totalSamplesReceived,
        });
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        figures.bytesOut = s.bytesSent;
      } else if (s.type === "remote-inbound-rtp" && s.kind === "audio") {
        figures.jitterOut = s.jitter * 1000;
        figures.lostOut = s.packetsLost;
        // measured with RTCP on the media path itself: preferred over the ICE checks' figure
        if (s.roundTripTime !== undefined) figures.rtt = s.roundTripTime * 1000;
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        if (s.currentRoundTripTime !== undefined) figures.rttIce = s.currentRoundTripTime * 1000;
      }
    });
    figures.rtt ??= figures.rttIce;
    const last = this.last;
    if (last) {
      const seconds = (now - last.at) / 1000;
      figures.kbpsIn = (8 * (figures.bytesIn - last.bytesIn)) / seconds / 1000;
      figures.kbpsOut = (8 * (figures.bytesOut - last.bytesOut)) / seconds / 1000;
    }
    this.last = figures;
    state.clientStats = figures;
    renderStats();
  }

  close() {
    clearInterval(this.statsTimer);
    this.pc.close();
    if (!this.attached || state.remoteStream !== this.stream) return; // another call plays now
    ui.audio.srcObject = null;
    meters.unwatch("out");
    state.remoteStream = null;
  }
}

// -- moving a call off a draining server (make-before-break) ---------------------------------------

// The server is going away ("draining"): open a new connection through the same URL (the balancer
// sends it to a server that is ready), start the same call there (same voice, same settings), and
// only once its media connected close the old one. A new connection answered "server_draining"
// reached this server again (the balancer has not seen its /readyz turn 503 yet): tried again after
// a pause, for up to half the grace period. Any other refusal, or a new call that does not connect,
// leaves the call here until this server ends it.
async function moveCall(graceS) {
  if (state.move?.status === "moving" || !call) return;
  const old = { signalling, call };
  // attempts: why each try that did not move the call failed (diagnostics, and the browser tests)
  state.move = { status: "moving", reason: null, grace_s: graceS, attempts: [] };
  setCallState("moving", "This server is shutting down: moving your call to another server…");
  const giveUpAt = performance.now() + (graceS * 1000) / 2;
  let pause = MOVE_RETRY_MS;
  for (;;) {
    const outcome = await attemptMove(old);
    state.move.attempts.push(outcome.reason ?? "moved");
    if (outcome.moved) {
      state.moves += 1;
      state.move = { status: "moved", reason: null, grace_s: graceS, attempts: state.move.attempts };
      const voice = state.voices.find((v) => v.id === chosenVoice());
      setCallState("live", `Your call moved to another server. Live${voice ? `: you sound like ${voice.name}` : ""}.`);
      return;
    }
    const stillHere = call === old.call && state.callWanted;
    if (!outcome.retry || !stillHere || performance.now() + pause > giveUpAt) {
      state.move = { status: "stayed", reason: outcome.reason, grace_s: graceS, attempts: state.move.attempts };
      if (stillHere) {
        setCallState(
          "live",
          `This server is shutting down and no other server could take your call (${outcome.reason}). It continues on this server for up to ${Math.round(graceS)} s, then the page reconnects.`,
        );
      }
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(2 * pause, MOVE_RETRY_MAX_MS);
  }
}

// One try at moving the call: resolves { moved: true } once the new call connected and the old one
// was closed, or { moved: false, reason, retry } (everything of the try closed again).
function attemptMove(old) {
  return new Promise((resolve) => {
    let ready = null;
    let nextCall = null;
    let settled = false;

    const fail = (reason, retry = false) => {
      if (settled) return;
      settled = true;
      next.onMessage = next.onClosed = () => {};
      nextCall?.close();
      next.ws?.close();
      resolve({ moved: false, reason, retry });
    };

    const complete = () => {
      if (settled) return;
      if (call !== old.call) {
        // the old call ended meanwhile (its server stopped): the page's own reconnection has it
        fail("the call ended");
        return;
      }
      settled = true;
      // make: the new connection and call become the page's
      next.onMessage = handleMessage;
      next.onClosed = onSignallingClosed;
      signalling = next;
      call = nextCall;
      state.ready = ready;
      showEngine(ready.engine);
      // break: the old call ends and its server is told so (its close is expected: no reconnect)
      old.signalling.onMessage = old.signalling.onClosed = () => {};
      old.call.close();
      old.signalling.bye();
      call.attach();
      resolve({ moved: true });
    };

    const next = new Signalling({
      onMessage: (message) => {
        if (message.type === "ready") {
          ready = message;
          next.markReady();
        } else if (message.type === "answer") nextCall?.onAnswer(message.sdp);
        else if (message.type === "ice") nextCall?.onRemoteCandidate(message);
        else if (message.type === "error" && message.fatal) fail(message.message, message.code === "server_draining");
        else if (message.type === "draining") fail("the other server is shutting down too", true);
      },
      onClosed: () => fail("the new connection closed"),
      reserve: true,
    });
    next.connect();
    next
      .whenReady()
      .then(() => {
        if (settled) return;
        if (!state.callWanted || call !== old.call) {
          fail("the call ended");
          return;
        }
        nextCall = new Call(state.micStream, {
          link: next,
          iceServers: ready.ice_servers,
          onState: (value) => {
            if (value === "connected") complete();
            else if (value === "failed") fail("the media connection to the new server failed");
          },
        });
        return nextCall.offer(chosenVoice());
      })
      .catch((err) => fail(err.message));
  });
}

function renderStats() {
  const server = state.serverStats || {};
  const client = state.clientStats || {};
  const jitterBuffer = client.jitterBufferMs ?? 0;
  const latency = server.latency_ms !== undefined && server.latency_ms !== null ? server.latency_ms + jitterBuffer : null;
  $("stat-latency").textContent = fmt(latency, "ms");
  $("stat-rtt").textContent = fmt(client.rtt ?? server.rtt_ms, "ms", 1);
  $("stat-jitter").textContent = `${fmt(client.jitterIn, "ms", 1)} / ${fmt(client.jitterOut ?? server.jitter_ms, "ms", 1)}`;
  const total = (client.received ?? 0) + Math.max(0, client.lost ?? 0);
  $("stat-loss").textContent = total ? `${((100 * Math.max(0, client.lost)) / total).toFixed(1)} %` : "–";
  $("stat-bitrate").textContent = `${fmt(client.kbpsOut, "kb/s")} / ${fmt(client.kbpsIn, "kb/s")}`;
  $("stat-inference").textContent =
    server.inference_ms !== undefined && server.inference_ms !== null
      ? `${server.inference_ms.toFixed(1)} ms of ${server.block_ms.toFixed(0)} ms`
      : "–";
  $("stat-drops").textContent = server.blocks !== undefined ? `${server.late_blocks} late, ${server.skipped_blocks ?? 0} skipped / ${fmt(server.dropped_ms, "ms")}` : "–";
  $("stat-backlog").textContent = fmt(server.backlog_ms, "ms");
  renderTimeToFirstAudio();
}

// time to first audio: from the microphone being open (after any permission prompt) to the first
// converted sound played
function renderTimeToFirstAudio() {
  const { mic, click, firstAudio } = state.timeline;
  const from = mic ?? click;
  ui.ttfa.textContent = firstAudio && from ? fmt((firstAudio - from) / 1000, "s", 2) : "–";
}

// a call that ended leaves no figures behind
function clearFigures() {
  state.serverStats = state.clientStats = null;
  state.timeline = {};
  renderStats();
  renderNetwork({});
  renderSimilarity({});
}

// One plain line on the network: the worse direction's loss over the last interval, and whether the
// server protects what it sends with Opus in-band FEC.
function networkLine(stats) {
  const losses = [stats.received_loss_pct, stats.sent_loss_pct].filter((v) => typeof v === "number");
  if (!losses.length) return "";
  const loss = Math.max(...losses);
  const lossText = loss < 0.5 ? "no loss" : `${loss.toFixed(0)}% loss`;
  return `network: ${lossText}, ${stats.fec ? "protected by FEC" : "not protected by FEC"}`;
}

function renderNetwork(stats) {
  const line = $("network-line");
  if (!line) return;
  line.textContent = networkLine(stats);
  line.hidden = !line.textContent;
}

// The server's live speaker-similarity estimate (CAM++ cosine 0..1, null until a few seconds of
// speech), shown as "sounds 72% like Clara"; the title of #stat-similarity explains the number.
function renderSimilarity(server) {
  const toVoice = server.voice_similarity;
  const toOwn = server.own_voice_similarity;
  if (toVoice === undefined || toVoice === null) {
    $("stat-similarity").textContent = toOwn === undefined || toOwn === null ? "–" : `${Math.round(100 * toOwn)}% like you`;
    return;
  }
  const name = state.voices.find((v) => v.id === chosenVoice())?.name ?? "the voice";
  const own = toOwn === undefined || toOwn === null ? "" : ` (${Math.round(100 * toOwn)}% like you)`;
  $("stat-similarity").textContent = `sounds ${Math.round(100 * toVoice)}% like ${name}${own}`;
}

function micErrorText(err) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return "The microphone needs a secure page: open this site over HTTPS (or on localhost).";
  }
  if (err?.name === "NotAllowedError" || err?.name === "SecurityError") {
    return "Microphone access was denied. Allow it in the browser's site settings, then press Start again.";
  }
  if (err?.name === "NotFoundError" || err?.name === "OverconstrainedError") {
    return "No microphone was found. Connect one and press Start again.";
  }
  if (err?.name === "NotReadableError") {
    return "The microphone is in use by another application.";
  }
  return `The microphone could not be opened: ${err?.message || err}`;
}

async function openMicrophone() {
  if (state.micStream) return state.micStream;
  if (!navigator.mediaDevices?.getUserMedia) throw new Error("insecure");
  // echo cancellation keeps the converted voice out of the microphone on loudspeakers; no noise
  // suppression or gain control: they colour the voice the engine converts
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
  });
  state.micStream = stream;
  meters.watch("in", stream);
  return stream;
}

function closeMicrophone() {
  if (!state.micStream) return;
  state.micStream.getTracks().forEach((track) => track.stop());
  state.micStream = null;
  meters.unwatch("in");
}

async function startCall() {
  clearFigures();
  state.timeline = { click: performance.now() };
  if (!chosenVoice()) {
    const text = state.voices.length ? "Choose a voice first, then start the microphone." : "Add a voice first (or record one), then start the microphone.";
    setCallState("idle", text);
    return;
  }
  setCallState("starting", "Asking for the microphone…");
  meters.resume();
  try {
    await openMicrophone();
  } catch (err) {
    setCallState("mic-denied", micErrorText(err));
    return;
  }
  state.timeline.mic = performance.now();
  state.callWanted = true;
  await placeCall();
}

// one call being placed at a time (a reconnection and a return from waiting may both ask)
async function placeCall() {
  if (state.placing) return;
  state.placing = true;
  try {
    await placeCallOnce();
  } finally {
    state.placing = false;
  }
}

async function placeCallOnce() {
  // a call resumed after a dropped connection: its time to first audio counts from here
  if (!state.timeline.click) state.timeline = { click: performance.now() };
  setCallState("connecting", "Connecting…");
  if (state.idle || !signalling.ws || signalling.ws.readyState > WebSocket.OPEN) {
    state.idle = false;
    signalling.connect();
  }
  try {
    await signalling.whenReady();
  } catch {
    // still waiting for a place: the waiting state stays; otherwise the server did not answer
    if (!state.waiting) setCallState("reconnecting", "The server is not reachable. Retrying…");
    resumeCallWhenReady();
    return;
  }
  if (!state.callWanted || call) return;
  if (!state.micStream) {
    // back from waiting for a place: the microphone was closed meanwhile
    try {
      await openMicrophone();
    } catch (err) {
      stopCall(micErrorText(err));
      return;
    }
    state.timeline.mic = performance.now();
  }
  state.waiting = null;
  call = new Call(state.micStream);
  try {
    await call.offer(chosenVoice());
  } catch (err) {
    setCallState("error", `Could not start the call: ${err.message}`);
  }
}

function stopCall(text = "Stopped. Press Start to talk again.") {
  state.callWanted = false;
  if (call) {
    call.close();
    call = null;
    state.closingOnPurpose = true;
    signalling.bye();
  }
  closeMicrophone();
  state.waiting = null;
  clearFigures();
  setCallState("idle", text);
}

ui.start.addEventListener("click", () => {
  if (ui.start.dataset.action === "stop") stopCall();
  else startCall();
});

// -- level meters ----------------------------------------------------------------------------------

const meters = {
  context: null,
  analysers: {},
  frame: null,

  resume() {
    // created on a click: browsers only start audio after a user gesture
    this.context ??= new AudioContext();
    this.context.resume();
  },

  watch(which, stream) {
    this.resume();
    this.unwatch(which);
    const source = this.context.createMediaStreamSource(stream);
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    this.analysers[which] = { source, analyser, data: new Float32Array(analyser.fftSize) };
    this.frame ??= requestAnimationFrame(() => this.draw());
  },

  unwatch(which) {
    const entry = this.analysers[which];
    if (!entry) return;
    entry.source.disconnect();
    delete this.analysers[which];
    const bar = which === "in" ? ui.meterIn : ui.meterOut;
    bar.style.width = "0%";
    bar.parentElement.setAttribute("aria-valuenow", "0");
  },

  draw() {
    this.frame = null;
    for (const [which, entry] of Object.entries(this.analysers)) {
      entry.analyser.getFloatTimeDomainData(entry.data);
      let sum = 0;
      for (const x of entry.data) sum += x * x;
      const rms = Math.sqrt(sum / entry.data.length);
      if (which === "out" && rms > SOUND_RMS && !state.timeline.firstAudio && state.timeline.click) {
        state.timeline.firstAudio = performance.now();
        renderTimeToFirstAudio();
      }
      // -60 dBFS .. 0 dBFS onto 0..100 %
      const level = Math.max(0, Math.min(100, ((20 * Math.log10(rms + 1e-9) + 60) / 60) * 100));
      const bar = which === "in" ? ui.meterIn : ui.meterOut;
      bar.style.width = `${level.toFixed(0)}%`;
      bar.parentElement.setAttribute("aria-valuenow", level.toFixed(0));
    }
    if (Object.keys(this.analysers).length) this.frame = requestAnimationFrame(() => this.draw());
  },
};

// -- start-up --------------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await apiJson("/api/info");
    showEngine({ name: info.engine, note: info.engine_note, cpu_fallback: info.cpu_fallback });
    if (info.auth === "required" && !ACCESS_TOKEN) refuse({ code: "unauthorized" });
    // an open server says so: everyone who reaches it shares its voices
    document.getElementById("open-notice").hidden = info.auth !== "open";
  } catch {
    /* the signalling connection reports the server's state */
  }
}

renderStats();
loadInfo();
loadVoices();
refreshVoicesWhenSeen();
signalling.connect();

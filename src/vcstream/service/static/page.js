// The page's state (window.vcstream), its elements, and the notices it shows: call and server state,
// the engine banner.

export const $ = (id) => document.getElementById(id);
export const ui = {
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
export const state = {
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
  // null, or { retryInMs, attempts, queued, position } while the server is full and the call waits for a
  // place (queued: in the server's queue, at position; retryInMs: until the next try of a fresh connection)
  waiting: null,
  draining: false, // the server announced it is going away
};
window.vcstream = state;

// the signalling connection and the call the page uses now (replaced when a call moves to another server)
export const current = { signalling: null, call: null };

export function setCallState(name, text) {
  state.callState = name;
  ui.callStatus.dataset.state = name;
  ui.callStatus.textContent = text;
  const active = ["starting", "connecting", "live", "reconnecting", "waiting", "moving"].includes(name);
  ui.start.textContent = active ? "Stop" : "Start microphone";
  ui.start.dataset.action = active ? "stop" : "start";
  ui.start.classList.toggle("danger", active);
}

export function setServerState(name, text) {
  ui.serverState.dataset.state = name;
  ui.serverState.textContent = text;
}

export function fmt(value, unit, digits = 0) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : `${Number(value).toFixed(digits)} ${unit}`;
}

// What the engine in use means for the listener, in plain words; the server's technical note (CUDA,
// model cache...) sits behind "Details".
function engineNotice(engine) {
  if (engine.overflow) return "The server is busy, so your call uses a simpler voice engine: the voice sounds less natural than usual.";
  if (engine.cpu_fallback) return "The voice engine runs in a simpler mode right now: the converted voice sounds less like the chosen voice than usual.";
  return "Test mode: your own voice comes back unchanged.";
}

export function showEngine(engine) {
  if (!engine) return;
  ui.banner.hidden = !engine.cpu_fallback && !engine.overflow && engine.name !== "passthrough";
  ui.banner.dataset.kind = engine.overflow ? "overflow" : engine.cpu_fallback ? "cpu" : engine.name;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Details";
  details.append(summary, `${engine.note}.`);
  ui.banner.replaceChildren(`${engineNotice(engine)} `, details);
}

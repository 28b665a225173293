// The page's session with the server: what its signalling connection says (ready, errors, drain),
// placing and stopping the call, waiting for a place on a full server, refusals.

import { Call } from "./call.js";
import { FULL_MAX_DELAY_MS } from "./config.js";
import { clearFigures, renderNetwork, renderSimilarity, renderStats } from "./figures.js";
import { closeMicrophone, micErrorText, openMicrophone } from "./microphone.js";
import { meters } from "./meters.js";
import { moveCall } from "./move.js";
import { current, setCallState, setServerState, showEngine, state, ui } from "./page.js";
import { renderSettings } from "./settings.js";
import { chosenVoice, loadVoices, renderVoices } from "./voices.js";
import { stopTryingElsewhere, waitInQueue } from "./waiting.js";

export function handleMessage(message) {
  switch (message.type) {
    case "ready":
      state.ready = message;
      state.settings = { ...message.settings, ...state.settings };
      renderSettings(message.settings_schema, state.settings);
      renderVoices(message.voices);
      showEngine(message.engine);
      setServerState("ready", "Connected");
      state.draining = false;
      current.signalling.markReady();
      stopTryingElsewhere();
      // a place came to a call that waits for one (the server's queue, or a try elsewhere)
      if (state.callWanted && !current.call) placeCall();
      break;
    case "waiting":
      waitInQueue(message);
      break;
    case "answer":
      current.call?.onAnswer(message.sdp);
      break;
    case "ice":
      current.call?.onRemoteCandidate(message);
      break;
    case "stats":
      if (!current.call) break; // a late report of a call that ended: its figures stay cleared
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

export function onSignallingClosed(event) {
  stopTryingElsewhere();
  const leaving = state.closingOnPurpose;
  state.closingOnPurpose = false;
  if (current.call) {
    current.call.close();
    current.call = null;
  }
  if (state.refused === "unauthorized") return; // the same token would be refused again
  if (leaving) {
    // we said bye: get a fresh connection for the next call without fuss
    current.signalling.connect();
    return;
  }
  if (state.idle && !state.callWanted) {
    setServerState("idle", "Idle");
    return;
  }
  clearFigures();
  if (current.signalling.fullDelay) {
    // refused for lack of room: the waiting state says so; the next try comes after the full backoff
    current.signalling.connectAfter(current.signalling.fullDelay);
    current.signalling.fullDelay = null;
    if (state.callWanted) resumeCallWhenReady();
    return;
  }
  current.signalling.reconnectLater();
  state.reconnectAttempts = current.signalling.attempts; // diagnostics (and the browser tests)
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
    await current.signalling.whenReady(FULL_MAX_DELAY_MS * 2);
  } catch {
    return; // the next close schedules another attempt
  }
  if (state.callWanted && !current.call) await placeCall();
}

// The server is full: the call waits for a place with the microphone off (nothing is sent, and the
// browser's recording indicator goes out), and the connection is tried again with backoff.
function waitForPlace(retryAfterS) {
  const delay = current.signalling.retryWhenFull(retryAfterS);
  state.waiting = { retryInMs: delay, attempts: current.signalling.fullAttempts };
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

export function refuse(error) {
  state.refused = error.code;
  if (error.code === "unauthorized") setServerState("down", "Not signed in");
  if (state.callWanted) stopCall(REFUSALS[error.code]);
  else ui.callStatus.textContent = REFUSALS[error.code];
}

// SIGTERM on the server: said at once; a call is moved to another server (or ends with a reason)
function onDraining(graceS) {
  state.draining = true;
  setServerState("draining", "Restarting");
  if (current.call) moveCall(graceS);
  else ui.callStatus.textContent = "This server is restarting; the page reconnects by itself.";
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
  if (state.idle || !current.signalling.ws || current.signalling.ws.readyState > WebSocket.OPEN) {
    state.idle = false;
    current.signalling.connect();
  }
  try {
    await current.signalling.whenReady();
  } catch {
    // still waiting for a place: the waiting state stays; otherwise the server did not answer
    if (!state.waiting) setCallState("reconnecting", "The server is not reachable. Retrying…");
    resumeCallWhenReady();
    return;
  }
  if (!state.callWanted || current.call) return;
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
  current.call = new Call(state.micStream);
  try {
    await current.call.offer(chosenVoice());
  } catch (err) {
    setCallState("error", `Could not start the call: ${err.message}`);
  }
}

function stopCall(text = "Stopped. Press Start to talk again.") {
  state.callWanted = false;
  if (current.call) {
    current.call.close();
    current.call = null;
    state.closingOnPurpose = true;
    current.signalling.bye();
  }
  if (state.waiting?.queued) {
    // leave the server's queue: its place goes to the next in line
    state.closingOnPurpose = true;
    current.signalling.bye();
  }
  stopTryingElsewhere();
  closeMicrophone();
  state.waiting = null;
  clearFigures();
  setCallState("idle", text);
}

ui.start.addEventListener("click", () => {
  if (ui.start.dataset.action === "stop") stopCall();
  else startCall();
});

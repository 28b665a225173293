// Waiting for a place on a full server. The page's connection asks to wait (hello with "wait"), and
// the server keeps it in its queue and sends "ready" the moment a place is given back. Behind a
// balancer another server may have room first, so the page also tries a fresh connection now and
// then (the server's retry hint, growing, with jitter); whichever gives a place first wins, and the
// other connection is closed (closing it leaves that server's queue).

import { closeMicrophone } from "./microphone.js";
import { current, setCallState, setServerState, state } from "./page.js";
import { handleMessage, onSignallingClosed } from "./session.js";
import { Signalling } from "./signalling.js";

let probe = null; // the fresh connection being tried now
let probeTimer = null;

// "waiting": the page's connection is in the server's queue, at message.position
export function waitInQueue(message) {
  const first = !state.waiting?.queued;
  state.waiting = { ...state.waiting, queued: true, position: message.position };
  if (first) tryElsewhereLater(message.retry_after_s);
  showWaiting();
}

// the queued connection got its place, closed, or the call was stopped: no more tries elsewhere
export function stopTryingElsewhere() {
  clearTimeout(probeTimer);
  probeTimer = null;
  dropProbe();
  if (state.waiting) state.waiting.queued = false;
}

function showWaiting() {
  setServerState("full", "Server full");
  if (!state.callWanted) return;
  closeMicrophone();
  const { position } = state.waiting;
  const where = position === 1 ? "next in line" : `number ${position} in line`;
  setCallState(
    "waiting",
    `All places are taken. You are waiting for one, ${where}: the call starts as soon as a place frees, and your microphone is off until then.`,
  );
}

// each try elsewhere counts as an attempt, as a refused connection does (window.vcstream.waiting)
function tryElsewhereLater(retryAfterS) {
  const queued = current.signalling;
  const delay = queued.retryWhenFull(retryAfterS);
  queued.fullDelay = null; // the queued connection was not refused: if it drops, it reconnects at once
  state.waiting = { ...state.waiting, retryInMs: delay, attempts: queued.fullAttempts };
  clearTimeout(probeTimer);
  probeTimer = setTimeout(tryElsewhere, delay);
}

function tryElsewhere() {
  probeTimer = null;
  if (!state.callWanted || !state.waiting?.queued) return;
  const attempt = new Signalling({
    reserve: true,
    onMessage: (message) => {
      if (probe !== attempt) return;
      if (message.type === "ready") adopt(attempt, message);
      else if (message.type === "error" && message.fatal) {
        state.errors.push(message);
        dropProbe();
        tryElsewhereLater(message.code === "server_full" ? message.retry_after_s : null);
      }
    },
    onClosed: () => {
      if (probe !== attempt) return;
      dropProbe();
      tryElsewhereLater(null);
    },
  });
  probe = attempt;
  attempt.connect();
}

function dropProbe() {
  const attempt = probe;
  probe = null;
  if (!attempt) return;
  attempt.onMessage = attempt.onClosed = () => {};
  attempt.ws?.close();
}

// another server had a place first: its connection becomes the page's, and the queued one is closed
function adopt(attempt, ready) {
  const queued = current.signalling;
  probe = null;
  clearTimeout(queued.timer);
  queued.onMessage = queued.onClosed = () => {};
  attempt.readyWaiters.push(...queued.readyWaiters.splice(0));
  attempt.onMessage = handleMessage;
  attempt.onClosed = onSignallingClosed;
  attempt.wait = true;
  current.signalling = attempt;
  queued.ws?.close();
  handleMessage(ready);
}

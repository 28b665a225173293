// vcstream browser client, the page's entry module: voice library (REST), signalling (WebSocket,
// protocol v1, see vcstream/service/signalling/protocol.py), one RTCPeerConnection per call, level
// meters and live figures. Plain ES modules, no build step; each module has one job:
//   config.js      timings and thresholds         token.js     the access token, REST calls
//   page.js        state, elements, notices        voices.js    the voice library
//   record.js      recording a voice in the page   settings.js  per-call settings
//   signalling.js  the WebSocket, reconnection     session.js   messages, placing/stopping calls
//   call.js        one RTCPeerConnection            move.js      moving a call off a draining server
//   microphone.js  the microphone                  meters.js    level meters
//   figures.js     live figures                    waiting.js   waiting for a place on a full server

import { renderStats } from "./figures.js";
import { current, showEngine, state } from "./page.js";
import "./record.js";
import { handleMessage, onSignallingClosed, refuse } from "./session.js";
import { Signalling } from "./signalling.js";
import { ACCESS_TOKEN, apiJson } from "./token.js";
import { loadVoices, refreshVoicesWhenSeen } from "./voices.js";

async function loadInfo() {
  try {
    const info = await apiJson("/api/info");
    // the server's engine, until the signalling's "ready" says which one this page's calls get (an
    // overflow engine when the server is full): an answer that comes later must not undo that
    if (!state.ready) showEngine({ name: info.engine, note: info.engine_note, cpu_fallback: info.cpu_fallback });
    if (info.auth === "required" && !ACCESS_TOKEN) refuse({ code: "unauthorized" });
    // an open server says so: everyone who reaches it shares its voices
    document.getElementById("open-notice").hidden = info.auth !== "open";
  } catch {
    /* the signalling connection reports the server's state */
  }
}

current.signalling = new Signalling({ onMessage: handleMessage, onClosed: onSignallingClosed, wait: true });
renderStats();
loadInfo();
loadVoices();
refreshVoicesWhenSeen();
current.signalling.connect();

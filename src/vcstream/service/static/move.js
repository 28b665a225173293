// Moving a call off a draining server (make-before-break).

import { Call } from "./call.js";
import { MOVE_RETRY_MAX_MS, MOVE_RETRY_MS } from "./config.js";
import { current, setCallState, showEngine, state } from "./page.js";
import { handleMessage, onSignallingClosed } from "./session.js";
import { Signalling } from "./signalling.js";
import { chosenVoice } from "./voices.js";

// The server is going away ("draining"): open a new connection through the same URL (the balancer
// sends it to a server that is ready), start the same call there (same voice, same settings), and
// only once its media connected close the old one. A new connection answered "server_draining"
// reached this server again (the balancer has not seen its /readyz turn 503 yet): tried again after
// a pause, for up to half the grace period. Any other refusal, or a new call that does not connect,
// leaves the call here until this server ends it.
export async function moveCall(graceS) {
  if (state.move?.status === "moving" || !current.call) return;
  const old = { signalling: current.signalling, call: current.call };
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
    const stillHere = current.call === old.call && state.callWanted;
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
      if (current.call !== old.call) {
        // the old call ended meanwhile (its server stopped): the page's own reconnection has it
        fail("the call ended");
        return;
      }
      settled = true;
      // make: the new connection and call become the page's
      next.onMessage = handleMessage;
      next.onClosed = onSignallingClosed;
      next.wait = true; // from now the page's own connection
      current.signalling = next;
      current.call = nextCall;
      state.ready = ready;
      showEngine(ready.engine);
      // break: the old call ends and its server is told so (its close is expected: no reconnect)
      old.signalling.onMessage = old.signalling.onClosed = () => {};
      old.call.close();
      old.signalling.bye();
      current.call.attach();
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
        if (!state.callWanted || current.call !== old.call) {
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

// The signalling WebSocket (protocol v1, see vcstream/service/signalling/protocol.py) and its
// reconnection policy: quick retries after a lost connection, a longer backoff while the server is full.

import { FULL_FIRST_DELAY_MS, FULL_MAX_DELAY_MS, PROTOCOL, RECONNECT_FIRST_DELAY_MS, RECONNECT_MAX_DELAY_MS } from "./config.js";
import { state } from "./page.js";
import { ACCESS_TOKEN } from "./token.js";

export class Signalling {
  // handlers: where this connection's messages and its close go (the page's by default; a call
  // being moved to another server has its own until the move completes)
  // reserve: the connection is opened to call at once, so the server holds a place from hello
  // wait: while a call is wanted, a full server queues the connection instead of refusing it
  constructor({ onMessage, onClosed, reserve = false, wait = false }) {
    this.reserve = reserve;
    this.wait = wait;
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
    if (this.wait && state.callWanted) fields.wait = true;
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

// the attempt-th pause of a backoff: doubling from first up to max, then scaled by 0.5..1 (jitter)
function backoff(first, max, attempt) {
  return Math.min(max, first * 2 ** (attempt - 1)) * (0.5 + 0.5 * Math.random());
}

// One call: its RTCPeerConnection (the microphone out, the converted voice in), the ICE exchange over
// its signalling connection, and the browser's own figures of the call.

import { STATS_INTERVAL_MS } from "./config.js";
import { renderStats } from "./figures.js";
import { meters } from "./meters.js";
import { current, setCallState, state, ui } from "./page.js";
import { chosenVoice } from "./voices.js";

export class Call {
  // link: the signalling connection of this call; iceServers: from that connection's "ready";
  // onState: instead of the page's reaction to connection states (a call being moved in the
  // background), and then its audio is not played until attach()
  constructor(micStream, { link = current.signalling, iceServers = state.ready?.ice_servers, onState = null } = {}) {
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
      current.signalling.ws?.close();
    } else if (value === "disconnected") {
      setCallState("connecting", "Connection interrupted, waiting for it to recover…");
    }
  }

  async sampleStats() {
    if (current.call !== this) return; // a call being moved in: its figures are not the page's yet
    let report;
    try {
      report = await this.pc.getStats();
    } catch {
      return;
    }
    if (current.call !== this) return; // the call ended while its report was gathered: no figures come back
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

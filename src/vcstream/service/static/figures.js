// The live figures: the server's stats and the browser's own, the network line, the voice match.

import { $, fmt, state, ui } from "./page.js";
import { chosenVoice } from "./voices.js";

export function renderStats() {
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
export function renderTimeToFirstAudio() {
  const { mic, click, firstAudio } = state.timeline;
  const from = mic ?? click;
  ui.ttfa.textContent = firstAudio && from ? fmt((firstAudio - from) / 1000, "s", 2) : "–";
}

// a call that ended leaves no figures behind
export function clearFigures() {
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

export function renderNetwork(stats) {
  const line = $("network-line");
  if (!line) return;
  line.textContent = networkLine(stats);
  line.hidden = !line.textContent;
}

// The server's live speaker-similarity estimate (CAM++ cosine 0..1, null until a few seconds of
// speech), shown as "sounds 72% like Clara"; the title of #stat-similarity explains the number.
export function renderSimilarity(server) {
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

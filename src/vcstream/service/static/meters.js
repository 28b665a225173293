// Level meters of the microphone and the converted voice; they also note the first converted sound.

import { SOUND_RMS } from "./config.js";
import { renderTimeToFirstAudio } from "./figures.js";
import { state, ui } from "./page.js";

export const meters = {
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

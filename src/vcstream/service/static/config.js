// The page's timings and thresholds, in one place.

export const PROTOCOL = 1;
// reconnecting after a lost connection: never gives up while the tab is open, and the longest pause
// (with its jitter) stays under 2 s, so a server that is back is reached within 2 s
export const RECONNECT_FIRST_DELAY_MS = 250;
export const RECONNECT_MAX_DELAY_MS = 1500;
// waiting for a place on a full server: the server's retry_after_s, growing, with jitter so that
// waiting pages do not all come back at once
export const FULL_FIRST_DELAY_MS = 1000;
export const FULL_MAX_DELAY_MS = 30000;
// how often the voice list is refreshed while the page is visible (voices are added and deleted elsewhere)
export const VOICES_REFRESH_MS = 30000;
export const RECORD_MAX_S = 15;
// moving a call off a draining server: pauses between tries that reached the draining server again
export const MOVE_RETRY_MS = 250;
export const MOVE_RETRY_MAX_MS = 2000;
export const STATS_INTERVAL_MS = 1000;
// a level above this (RMS, full scale 1) counts as sound for "first audio"
export const SOUND_RMS = 0.003;

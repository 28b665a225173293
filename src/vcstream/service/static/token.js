// The access token (token mode) and the REST calls that carry it.

// the access token in the token mode: #token= in the page's address (a fragment never reaches a
// server, so the token stays out of access logs and Referer headers), or set by the embedding site
export const ACCESS_TOKEN = new URLSearchParams(location.hash.slice(1)).get("token") || window.VCSTREAM_TOKEN || null;

export function authHeaders() {
  return ACCESS_TOKEN ? { Authorization: `Bearer ${ACCESS_TOKEN}` } : {};
}

export async function apiJson(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body?.message || `${response.status} ${response.statusText}`);
  }
  return body;
}

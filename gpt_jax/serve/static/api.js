/* The web chat's HTTP client: JSON calls to the server (asking for the API key once on a 401
 * and keeping it in localStorage) and the reader of a reply's server-sent events.
 */
"use strict";

const Client = { key: localStorage.getItem("gpt_jax_key") || "" };

class HTTPError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body, raw = false) {
  const headers = { "Content-Type": "application/json" };
  if (Client.key) headers.Authorization = `Bearer ${Client.key}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) {
    await askKey();
    return api(method, path, body, raw);
  }
  if (!res.ok) {
    let payload = null;
    try { payload = await res.json(); } catch (e) { /* not JSON */ }
    throw new HTTPError(res.status, payload);
  }
  if (raw) return res;
  return res.status === 204 ? null : res.json();
}

function askKey() {
  return new Promise((resolve) => {
    const dialog = document.getElementById("key-dialog");
    document.getElementById("key-form").onsubmit = () => {
      Client.key = document.getElementById("key-input").value.trim();
      localStorage.setItem("gpt_jax_key", Client.key);
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
      }
    }
  }
}

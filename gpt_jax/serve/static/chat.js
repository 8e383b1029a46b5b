/* The web chat's page logic: conversations from /api/conversations, replies streamed over SSE,
 * the message tree (edit = a new user branch, regenerate = a new reply sibling, arrows switch).
 *
 * State lives on the server (SQLite); this page only holds what it shows. Every message body is
 * rendered through Markdown.render (DOM nodes, never HTML strings). With an API key required,
 * the key is asked once and kept in localStorage.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  conversations: [],
  conv: null,          // the open conversation: {id, title, model, temperature, leaf, ...}
  messages: new Map(), // its whole tree: id -> message
  streaming: null,     // {cid} while a reply streams
  titlePolls: 0,
  shown: 0,            // bumped by every open / new chat: a slower, older open must not win
  pendingHash: null,   // a #<id> followed while a reply streamed: opened when it ends
};

function setStatus(text) { $("status").textContent = text || ""; }

function showError(err) { setStatus(`Error: ${err.message}`); }

// ---- sidebar ------------------------------------------------------------------------------
async function loadList() {
  state.conversations = (await api("GET", "/api/conversations")).data;
  renderList();
  const untitled = state.conversations.some((c) => c.title === null && c.leaf !== null);
  if (untitled && state.titlePolls < 20) {
    state.titlePolls++;
    setTimeout(() => loadList().catch(showError), 1000);
  } else if (!untitled) {
    state.titlePolls = 0;
  }
}

function renderList() {
  const list = $("chats");
  list.replaceChildren();
  for (const c of state.conversations) {
    const li = document.createElement("li");
    li.dataset.testid = "chat-item";
    li.dataset.id = c.id;
    if (state.conv && state.conv.id === c.id) li.classList.add("current");
    const title = document.createElement("span");
    title.className = "title" + (c.title ? "" : " untitled");
    title.dataset.testid = "chat-title";
    title.textContent = c.title || "New chat";
    const rename = button("✎", "rename", "Rename", (ev) => { ev.stopPropagation(); startRename(li, c); });
    const del = button("×", "delete", "Delete", (ev) => { ev.stopPropagation(); removeChat(c); });
    li.append(title, rename, del);
    li.onclick = () => openConversation(c.id).catch(showError);
    list.append(li);
  }
}

function button(text, testid, title, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.dataset.testid = testid;
  b.title = title;
  b.onclick = onclick;
  return b;
}

function startRename(li, c) {
  const input = document.createElement("input");
  input.dataset.testid = "rename-input";
  input.value = c.title || "";
  li.querySelector(".title").replaceWith(input);
  input.focus();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title) await api("PATCH", `/api/conversations/${c.id}`, { title }).catch(showError);
    await loadList();
  };
  input.onkeydown = (ev) => {
    if (ev.key === "Enter") finish(true);
    if (ev.key === "Escape") finish(false);
  };
  input.onblur = () => finish(true);
}

async function removeChat(c) {
  if (!confirm(`Delete "${c.title || "New chat"}"?`)) return;
  await api("DELETE", `/api/conversations/${c.id}`);
  if (state.conv && state.conv.id === c.id) newChat();
  await loadList();
}

// ---- the open conversation -------------------------------------------------------------------
function newChat() {
  state.shown++;
  state.conv = null;
  state.messages = new Map();
  history.replaceState(null, "", "#");
  renderThread();
  renderList();
  $("composer").focus();
}

async function openConversation(id) {
  const shown = ++state.shown;
  const conv = await api("GET", `/api/conversations/${id}`);
  if (shown !== state.shown) return;  // another conversation was opened meanwhile
  state.conv = conv;
  state.messages = new Map(conv.messages.map((m) => [m.id, m]));
  delete conv.messages;
  history.replaceState(null, "", `#${id}`);
  if (conv.model) $("model").value = conv.model;
  $("temperature").value = conv.temperature;
  renderThread();
  renderList();
  if (conv.generating && !state.streaming) {
    setStatus("a reply is being generated…");
    setTimeout(() => { if (state.conv && state.conv.id === id && !state.streaming) openConversation(id).catch(showError); }, 1000);
  } else if (!state.streaming) {
    setStatus("");
  }
}

function children(parent) {
  return [...state.messages.values()].filter((m) => m.parent === parent);
}

function thread() {
  const path = [];
  let at = state.conv ? state.conv.leaf : null;
  while (at) {
    const m = state.messages.get(at);
    if (!m) break;
    path.push(m);
    at = m.parent;
  }
  return path.reverse();
}

// the newest leaf under a message: where switching to that branch lands
function deepestLeaf(id) {
  let kids = children(id);
  while (kids.length) {
    id = kids[kids.length - 1].id;
    kids = children(id);
  }
  return id;
}

async function switchBranch(message, step) {
  const siblings = children(message.parent);
  const next = siblings[siblings.indexOf(message) + step];
  if (!next || state.streaming) return;
  state.conv.leaf = deepestLeaf(next.id);
  renderThread();
  await api("PATCH", `/api/conversations/${state.conv.id}`, { leaf: state.conv.leaf });
}

function renderThread() {
  const box = $("messages");
  box.replaceChildren();
  const path = thread();
  for (const m of path) box.append(messageNode(m));
  const last = path[path.length - 1];
  setBanner(last && last.flagged ? last : null);
  box.scrollTop = box.scrollHeight;
}

function setBanner(flaggedMessage, where) {
  const banner = $("banner");
  if (!flaggedMessage && !where) { banner.hidden = true; return; }
  where = where || (flaggedMessage.content ? "output" : "input");
  banner.textContent = where === "input"
    ? "This message was flagged by the moderation model; it was not answered."
    : "The reply was flagged by the moderation model and stopped.";
  banner.hidden = false;
}

function messageNode(m) {
  const node = document.createElement("div");
  node.className = "message" + (m.flagged ? " flagged" : "");
  node.dataset.testid = "message";
  node.dataset.role = m.role;
  node.dataset.id = m.id;
  const body = document.createElement("div");
  body.className = "body";
  fillBody(body, m.parts || [{ type: "text", text: m.content }]);
  node.append(body);
  const meta = document.createElement("div");
  meta.className = "meta";
  const siblings = children(m.parent);
  if (siblings.length > 1) {
    const k = siblings.indexOf(m);
    const prev = button("‹", "branch-prev", "Previous version", () => switchBranch(m, -1).catch(showError));
    const next = button("›", "branch-next", "Next version", () => switchBranch(m, +1).catch(showError));
    prev.disabled = k === 0;
    next.disabled = k === siblings.length - 1;
    const pos = document.createElement("span");
    pos.dataset.testid = "branch-position";
    pos.textContent = `${k + 1}/${siblings.length}`;
    meta.append(prev, pos, next);
  }
  if (m.role === "user") {
    meta.append(button("Edit", "edit", "Edit (a new branch)", () => startEdit(node, m)));
  } else {
    meta.append(button("Regenerate", "regenerate", "Answer again (a new version)",
      () => send(null, m.parent).catch(showError)));
    if (m.finish_reason && m.finish_reason !== "stop") {
      const why = document.createElement("span");
      why.textContent = m.finish_reason === "cancelled" ? "stopped" : m.finish_reason;
      meta.append(why);
    }
  }
  node.append(meta);
  return node;
}

function fillBody(body, parts) {
  body.replaceChildren();
  for (const p of parts) {
    if (p.type === "tool_call") {
      const d = document.createElement("details");
      d.className = "tool-call";
      d.dataset.testid = "tool-call";
      const s = document.createElement("summary");
      s.textContent = `${p.name}: ${p.input}`;
      const out = document.createElement("pre");
      out.textContent = p.output;
      d.append(s, out);
      body.append(d);
    } else {
      body.append(Markdown.render(p.text));
    }
  }
}

function startEdit(node, m) {
  if (state.streaming) return;
  const box = document.createElement("textarea");
  box.dataset.testid = "edit-box";
  box.value = m.content;
  const save = button("Save & send", "edit-save", "Send as a new branch", () => {
    const text = box.value.trim();
    if (text) send(text, m.parent).catch(showError);
  });
  const cancel = button("Cancel", "edit-cancel", "Cancel", () => renderThread());
  node.replaceChildren(box, save, cancel);
  box.focus();
}

// ---- sending and streaming -------------------------------------------------------------------
async function ensureConversation() {
  if (state.conv) return state.conv;
  const conv = await api("POST", "/api/conversations", {
    model: $("model").value || undefined, temperature: Number($("temperature").value) });
  state.shown++;
  state.conv = conv;
  state.messages = new Map();
  history.replaceState(null, "", `#${conv.id}`);
  return conv;
}

// content: a new user message under `parent`; null: a new reply to the user message `parent`
async function send(content, parent) {
  if (state.streaming) return;
  const conv = await ensureConversation();
  state.streaming = { cid: conv.id };
  setBusy(true);
  setBanner(null);
  const box = $("messages");
  let userNode = null;
  if (content !== null) {
    userNode = messageNode({ id: "", parent, role: "user", content, parts: null });
    // the server's copy replaces it below; until then the thread shows it right away
    const cut = thread();
    const keep = parent ? cut.slice(0, cut.findIndex((m) => m.id === parent) + 1) : [];
    box.replaceChildren(...keep.map(messageNode), userNode);
  } else {
    const cut = thread();
    box.replaceChildren(...cut.slice(0, cut.findIndex((m) => m.id === parent) + 1).map(messageNode));
  }
  const reply = messageNode({ id: "", parent: null, role: "assistant", content: "", parts: [] });
  reply.classList.add("streaming");
  reply.querySelector(".meta").replaceChildren();
  box.append(reply);
  const body = reply.querySelector(".body");
  const parts = [];
  try {
    const res = await api("POST", `/api/conversations/${conv.id}/messages`, {
      parent, content, model: $("model").value || undefined,
      temperature: Number($("temperature").value) }, true);
    await readEvents(res, (ev) => {
      if (ev.type === "user") {
        state.messages.set(ev.message.id, ev.message);
        userNode.dataset.id = ev.message.id;
      } else if (ev.type === "delta") {
        const last = parts[parts.length - 1];
        if (last && last.type === "text") last.text += ev.text; else parts.push({ type: "text", text: ev.text });
        fillBody(body, parts);
        box.scrollTop = box.scrollHeight;
      } else if (ev.type === "tool_call") {
        parts.push({ type: "tool_call", ...ev.call });
        fillBody(body, parts);
      } else if (ev.type === "moderation") {
        setBanner(null, ev.where);
      } else if (ev.type === "error") {
        setStatus(ev.error.message);
      } else if (ev.type === "done") {
        state.messages.set(ev.message.id, ev.message);
        state.conv.leaf = ev.message.id;
        state.streaming = null;
        setBusy(false);
        renderThread();
        loadList().catch(showError);
      } else if (ev.type === "title") {
        loadList().catch(showError);
      }
    });
  } catch (err) {
    showError(err);
    await openConversation(conv.id).catch(() => {});
  } finally {
    state.streaming = null;
    setBusy(false);
    if (state.pendingHash) followHash().catch(showError);
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  setStatus(busy ? "generating…" : "");
}

async function stop() {
  if (!state.streaming) return;
  await api("POST", `/api/conversations/${state.streaming.cid}/stop`);
}

// a link or a typed #<id> opens that conversation (our own moves use replaceState: no event);
// while a reply streams, it waits for the end of the stream
async function followHash() {
  const id = location.hash.slice(1);
  state.pendingHash = null;
  if (!id || (state.conv && state.conv.id === id)) return;
  if (state.streaming) { state.pendingHash = id; return; }
  await loadList().catch(showError);
  await openConversation(id);
}

// ---- start -----------------------------------------------------------------------------------
async function loadModels() {
  const models = (await api("GET", "/v1/models")).data.filter((m) => m.chat);
  const select = $("model");
  select.replaceChildren(...models.map((m) => {
    const o = document.createElement("option");
    o.value = o.textContent = m.id;
    return o;
  }));
  const preferred = models.find((m) => m.id === "sft");
  if (preferred) select.value = "sft";
}

function wire() {
  $("new-chat").onclick = newChat;
  $("composer-form").onsubmit = (ev) => {
    ev.preventDefault();
    const text = $("composer").value.trim();
    if (!text || state.streaming) return;
    $("composer").value = "";
    const last = thread().pop();
    // after an unanswered user message (a server stopped mid-reply), the new one replaces it
    const parent = !last ? null : last.role === "assistant" ? last.id : last.parent;
    send(text, parent).catch(showError);
  };
  $("composer").onkeydown = (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer-form").requestSubmit(); }
  };
  $("stop").onclick = () => stop().catch(showError);
  window.onhashchange = () => followHash().catch(showError);
  $("model").onchange = () => {
    if (state.conv) api("PATCH", `/api/conversations/${state.conv.id}`, { model: $("model").value }).catch(showError);
  };
  $("temperature").onchange = () => {
    const t = Number($("temperature").value);
    if (state.conv && t >= 0 && t <= 2) api("PATCH", `/api/conversations/${state.conv.id}`, { temperature: t }).catch(showError);
  };
}

async function start() {
  wire();
  try {
    await loadModels();
  } catch (err) {
    if (err.status === 503) { setStatus("the models are loading…"); setTimeout(start, 2000); return; }
    throw err;
  }
  await loadList();
  const id = location.hash.slice(1);
  if (id && state.conversations.some((c) => c.id === id)) await openConversation(id);
  else newChat();
  document.body.dataset.ready = "1";
}

start().catch(showError);

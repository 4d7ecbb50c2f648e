/* board.js: the live order board's script (board.html). Loaded from
 * 'self' (the page's Content-Security-Policy allows nothing inline). */
"use strict";
const FINAL = ["CONFIRMED", "REJECTED", "CANCELLED", "EXPIRED"];
const $ = (id) => document.getElementById(id);
const rows = new Map(); /* order id -> {tr, streaming} */
const known = new Set(); /* every order id ever shown, so a pruned row never comes back */
const ROWS_MAX = 50;
let token = sessionStorage.getItem("ordersuite-token") || "";

function say(text, warn) {
  $("message").textContent = text;
  $("message").className = warn ? "warn" : "";
}
function money(minor, currency) {
  return (minor / 100).toFixed(2) + " " + currency;
}
function auth() {
  return { Authorization: "Bearer " + token };
}
async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = Object.assign({}, o.headers || {}, auth());
  const r = await fetch(path, o);
  if (r.status === 401) say("The API refused the token: paste a valid one.", true);
  return r;
}

async function loadCatalog() {
  const r = await fetch("/products");
  if (!r.ok) return;
  const products = await r.json();
  const tb = $("catalog").tBodies[0], sel = $("sku");
  tb.replaceChildren(); sel.replaceChildren();
  for (const p of products) {
    const tr = tb.insertRow();
    tr.insertCell().textContent = p.sku;
    tr.insertCell().textContent = p.name;
    tr.insertCell().textContent = money(p.price_minor, p.currency);
    const opt = document.createElement("option");
    opt.value = p.sku; opt.textContent = p.name + " (" + money(p.price_minor, p.currency) + ")";
    opt.dataset.currency = p.currency;
    sel.append(opt);
  }
}

function setStatus(id, status, at) {
  const row = rows.get(id);
  if (!row) return;
  const cell = row.tr.querySelector(".status");
  cell.textContent = status; cell.dataset.status = status;
  const ol = row.tr.querySelector("ol.timeline");
  if (at && !row.seen.has(status + at)) {
    row.seen.add(status + at);
    const li = document.createElement("li");
    li.textContent = status + " at " + at;
    ol.append(li);
  }
}

function addRow(o, top) {
  if (rows.has(o.id)) return rows.get(o.id);
  const tb = $("orders").tBodies[0];
  const tr = document.createElement("tr");
  tr.dataset.orderId = o.id;
  const idc = document.createElement("td");
  const code = document.createElement("code"); code.textContent = o.id; idc.append(code);
  const st = document.createElement("td"); st.className = "status";
  const total = document.createElement("td");
  total.textContent = o.total_minor != null ? money(o.total_minor, o.currency) : "";
  const tl = document.createElement("td");
  const det = document.createElement("details");
  const sum = document.createElement("summary"); sum.textContent = "Timeline";
  const ol = document.createElement("ol"); ol.className = "timeline";
  det.append(sum, ol); tl.append(det);
  tr.append(idc, st, total, tl);
  if (top) tb.prepend(tr); else tb.append(tr);
  const row = { tr, seen: new Set(), streaming: false };
  rows.set(o.id, row);
  known.add(o.id);
  /* The newest ROWS_MAX stay; an older row leaves (its stream ends at its
   * next reconnect: follow() stops for a row that is gone). */
  while (rows.size > ROWS_MAX && tb.rows.length) {
    const last = tb.rows[tb.rows.length - 1];
    rows.delete(last.dataset.orderId);
    last.remove();
  }
  setStatus(o.id, o.status);
  return row;
}

/* A browser holds at most 6 HTTP/1.1 connections to one host: an open
 * stream holds one, so at most STREAMS_MAX are open at once and the rest
 * wait their turn, leaving room for the form and the queue table. A slot is
 * held for one connection only, never across the pause before a reconnect,
 * and an urgent follow (the order just placed, or one the page has just
 * seen appear, not yet final) evicts the oldest stream that is not urgent,
 * or else the oldest one (which reconnects later, at the back of the line,
 * no longer urgent, so evictions never chase each other): orders that never
 * move cannot keep a new one off the page, even when they were new once. */
const STREAMS_MAX = 4;
const streamsActive = []; /* {ctrl}, oldest first */
const streamWaiters = [];
async function streamSlot(urgent) {
  const me = { ctrl: new AbortController(), urgent: Boolean(urgent) };
  if (streamsActive.length < STREAMS_MAX) { streamsActive.push(me); return me; }
  await new Promise((res) => {
    const w = () => { streamsActive.push(me); res(); };
    if (urgent) {
      streamWaiters.unshift(w);
      const live = streamsActive.filter((a) => !a.ctrl.signal.aborted);
      const victim = live.find((a) => !a.urgent) || live[0];
      if (victim) victim.ctrl.abort();
    } else {
      streamWaiters.push(w);
    }
  });
  return me;
}
function streamFree(me) {
  const i = streamsActive.indexOf(me);
  if (i >= 0) streamsActive.splice(i, 1);
  const next = streamWaiters.shift();
  if (next) next();
}
const pause = (ms) => new Promise((res) => setTimeout(res, ms));

/* Reads one event stream to its end; true once a final status came. */
async function readStream(id, r, onId) {
  let final = false;
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let data = "", evid = null;
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data += line.slice(5).trim();
        else if (line.startsWith("id:")) evid = line.slice(3).trim();
      }
      if (!data) continue;
      if (evid !== null) onId(evid);
      const ev = JSON.parse(data);
      setStatus(id, ev.status, ev.at);
      if (FINAL.includes(ev.status)) final = true;
    }
  }
  return final;
}

/* One order's timeline, then its changes live: GET /orders/{id}/events read
 * with fetch() (the Authorization header) and parsed as Server-Sent Events.
 * The stream ends after a final status; a dropped stream comes back with
 * Last-Event-ID. */
async function follow(id, urgent) {
  const row = rows.get(id);
  if (!row || row.streaming) return;
  row.streaming = true;
  let last = null, final = false;
  try {
    for (let attempt = 0; !final && attempt < 20 && rows.has(id); attempt++) {
      const slot = await streamSlot(urgent);
      /* Its row may have left the page while it waited for the slot. */
      if (!rows.has(id)) { streamFree(slot); break; }
      let wait = 0, gone = false;
      try {
        const h = Object.assign({ Accept: "text/event-stream" }, auth());
        if (last !== null) h["Last-Event-ID"] = last;
        const r = await fetch("/orders/" + encodeURIComponent(id) + "/events",
                              { headers: h, signal: slot.ctrl.signal });
        if (r.status === 204) gone = true;
        else if (!r.ok || !r.body) wait = 3000;
        else final = await readStream(id, r, (evid) => { last = evid; });
      } catch (e) {
        /* Evicted for a newer order: not a failed attempt, no pause; back
         * in line as not urgent. */
        if (slot.ctrl.signal.aborted) { attempt--; urgent = false; } else wait = 2000;
      } finally {
        streamFree(slot);
      }
      if (gone) break;
      if (wait) await pause(wait);
    }
  } finally {
    row.streaming = false;
  }
}

/* Walks GET /orders (oldest first, ?after=<id>) from the order id after,
 * at most maxPages pages of 100; returns the orders and whether it reached
 * the end, or null when the API refused. */
async function walkOrders(after, maxPages) {
  let list = [], end = false;
  for (let pages = 0; pages < maxPages; pages++) {
    const r = await api("/orders?limit=100" + (after ? "&after=" + encodeURIComponent(after) : ""));
    if (!r.ok) return null;
    const page = (await r.json()).orders || [];
    list = list.concat(page);
    if (page.length < 100) { end = true; break; }
    after = page[page.length - 1].id;
  }
  return { list, end };
}

/* Where the next look for new orders starts (an order id, "" = the start).
 * It stays CURSOR_LAG_MS behind the newest order walked: the list is sorted
 * by created_at, the start of the order's transaction, so an order that
 * began earlier but committed later (a slower group commit, another
 * order-api instance) still sorts after the cursor and is found. */
const CURSOR_LAG_MS = 10000;
let cursor = "", ordersLoaded = false; /* no look for new orders before the first walk */
function advanceCursor(walked) {
  const { list, end } = walked;
  if (!list.length) return;
  if (!end) { cursor = list[list.length - 1].id; return; } /* behind: catch up */
  const newest = Date.parse(list[list.length - 1].created_at);
  for (let i = list.length - 1; i >= 0; i--) {
    if (newest - Date.parse(list[i].created_at) >= CURSOR_LAG_MS) { cursor = list[i].id; return; }
  }
}

async function loadOrders() {
  if (!token) return;
  /* Walk to the end, at most 50 pages, and show the newest 20, newest on top. */
  const walked = await walkOrders("", 50);
  if (!walked) return;
  advanceCursor(walked);
  ordersLoaded = true;
  const shown = [];
  for (const o of walked.list.slice(-20)) {
    if (known.has(o.id)) continue;
    addRow(o, true);
    shown.push(o.id);
  }
  /* The newest first: they take the free stream slots, older ones wait. */
  for (const id of shown.reverse()) follow(id);
}

/* Orders placed elsewhere (another tab, curl, loadgen) appear without a
 * reload: 2 s after each look, the page asks for the orders after the
 * cursor (at most 5 pages), puts each one it has not shown on top and
 * follows its stream urgently: seen PENDING, it must not wait for a slot
 * held by orders that never move (it stayed PENDING on the page while its
 * order was CONFIRMED). The list is the token's client's orders only. */
async function pollNewOrders() {
  try {
    if (token && ordersLoaded) {
      const walked = await walkOrders(cursor, 5);
      if (walked) {
        advanceCursor(walked);
        /* Catching up on many orders, only the newest ROWS_MAX would stay
         * on the page: the older ones are skipped (known, never shown), so
         * they queue no follow ahead of the newest. Only an order not yet
         * final is urgent: a final one's stream just ends. */
        const fresh = walked.list.filter((o) => !known.has(o.id));
        for (const o of fresh) known.add(o.id);
        const shown = fresh.slice(-ROWS_MAX);
        for (const o of shown) addRow(o, true);
        for (const o of shown.reverse()) follow(o.id, !FINAL.includes(o.status));
      }
    }
  } catch (e) {
    /* the API away: the next look tries again */
  } finally {
    setTimeout(pollNewOrders, 2000);
  }
}

async function loadQueues() {
  if (!token) return;
  let r;
  try { r = await api("/board/queues"); } catch (e) { return; }
  if (r.status === 403) {
    /* Only the operators' clients (BOARD_CLIENTS) see the depths. */
    const tb = $("queues").tBodies[0];
    tb.replaceChildren();
    const td = tb.insertRow().insertCell();
    td.colSpan = 3; td.className = "muted";
    td.textContent = "Not shown to this token's client (order-api's BOARD_CLIENTS).";
    return;
  }
  if (!r.ok) return;
  const doc = await r.json();
  const tb = $("queues").tBodies[0];
  tb.replaceChildren();
  for (const q of doc.queues) {
    const tr = tb.insertRow();
    tr.dataset.service = q.service;
    const th = document.createElement("th"); th.scope = "row"; th.textContent = q.service;
    tr.append(th);
    /* pos consumes nothing: it has no queue to count. */
    const none = q.queue === null ? "no queue" : "unknown";
    tr.insertCell().textContent = q.depth === null ? none : String(q.depth);
    tr.insertCell().textContent = q.dlq_depth === null ? none : String(q.dlq_depth);
  }
}
/* The next refresh is asked 3 s after the last one's answer, never while
 * one is still waiting: a slow broker never piles requests up. */
async function pollQueues() {
  try { await loadQueues(); } finally { setTimeout(pollQueues, 3000); }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("ordersuite-token", token);
  $("token").value = "";
  say(token ? "Token set for this tab." : "No token.");
  loadOrders(); loadQueues();
});

$("order-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!token) { say("Paste a token first.", true); $("token").focus(); return; }
  const opt = $("sku").selectedOptions[0];
  const body = {
    customer_id: $("customer").value, customer_email: $("email").value,
    currency: opt ? opt.dataset.currency : "EUR",
    items: [{ sku: $("sku").value, quantity: Number($("quantity").value) }],
  };
  let r;
  try {
    r = await api("/orders", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) });
  } catch (err) { say("The API did not answer.", true); return; }
  const doc = await r.json().catch(() => ({}));
  if (r.status !== 201) { say("Refused (" + r.status + "): " + (doc.detail || doc.title || ""), true); return; }
  say("Order " + doc.id + " placed.");
  addRow(doc, true);
  follow(doc.id, true);
});

loadCatalog();
loadOrders().finally(() => setTimeout(pollNewOrders, 2000));
pollQueues();

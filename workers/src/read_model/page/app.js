// The read replica's inventory page: products live over the WebSocket (snapshot, then changes),
// alerts and the replica's watermark from REST every two seconds. Everything the page shows
// from the data is set as text, never as HTML.
"use strict";

const LOW_STOCK = 10;
const CRITICAL_STOCK = 5;
const products = new Map();
const changed = new Set();
let renderQueued = false;

const $ = (id) => document.getElementById(id);

function badges(p) {
  if (p.inventory <= 0) return [["out", "out of stock"]];
  if (p.inventory <= CRITICAL_STOCK) return [["critical", "critical"]];
  if (p.inventory <= LOW_STOCK) return [["low", "low stock"]];
  return [["ok", "in stock"]];
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function matches(p, filter) {
  if (!filter) return true;
  return [p.productId, p.name, p.category, p.brand]
    .some((v) => String(v || "").toLowerCase().includes(filter));
}

function render() {
  renderQueued = false;
  const filter = $("filter").value.trim().toLowerCase();
  const body = document.createElement("tbody");
  const ids = [...products.keys()].sort();
  for (const id of ids) {
    const p = products.get(id);
    if (!matches(p, filter)) continue;
    const row = body.insertRow();
    row.dataset.id = id;
    if (changed.has(id)) row.className = "changed";
    cell(row, id);
    cell(row, p.name || "");
    cell(row, p.category || "");
    cell(row, p.brand || "");
    cell(row, Number(p.price).toFixed(2), "num");
    cell(row, String(p.inventory), "num stock");
    const b = cell(row, "");
    for (const [cls, label] of badges(p)) {
      const span = document.createElement("span");
      span.className = "badge " + cls;
      span.textContent = label;
      b.appendChild(span);
    }
    cell(row, p.lastUpdate ? new Date(p.lastUpdate).toLocaleTimeString() : "");
  }
  changed.clear();
  $("products").replaceChild(body, $("products").tBodies[0]);
  $("count").textContent = String(products.size);
}

function queueRender() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(render);
  }
}

function apply(list, mark) {
  for (const p of list || []) {
    products.set(p.productId, p);
    if (mark) changed.add(p.productId);
  }
}

function connect(path) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + path);
  ws.onopen = () => { $("live").textContent = "live"; };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "snapshot") {
      apply(msg.products, false);
    } else if (msg.type === "update") {
      apply(msg.products, true);
      for (const id of msg.deleted || []) products.delete(id);
    }
    queueRender();
  };
  ws.onclose = (e) => {
    $("live").textContent = "reconnecting (closed " + e.code + ")";
    setTimeout(() => connect(path), 2000);
  };
}

// Without a WebSocket (disabled in the replica's config) the page polls the product list.
async function pollProducts() {
  let cursor = "";
  const seen = new Map();
  do {
    const r = await fetch("/products?limit=1000" + (cursor ? "&cursor=" + cursor : ""));
    if (!r.ok) break;
    const page = await r.json();
    for (const p of page.items) seen.set(p.productId, p);
    cursor = page.nextCursor || "";
  } while (cursor);
  for (const [id, p] of seen) {
    const old = products.get(id);
    if (!old || old.inventory !== p.inventory || old.price !== p.price) changed.add(id);
  }
  products.clear();
  for (const [id, p] of seen) products.set(id, p);
  queueRender();
}

async function refresh() {
  try {
    const s = await (await fetch("/stats")).json();
    $("read-model").textContent = s.readModel;
    $("instance").textContent = s.instance;
    $("watermark").textContent = s.offsets || "(nothing read yet)";
    const a = await (await fetch("/alerts?limit=20")).json();
    const list = document.createElement("ol");
    list.id = "alerts";
    for (const alert of a.alerts) {
      const li = document.createElement("li");
      li.className = alert.severity || "";
      li.textContent = alert.message || alert.alertType;
      const when = document.createElement("small");
      when.textContent = alert.productId + " · " + alert.alertType + " · " +
        new Date(alert.timestamp).toLocaleTimeString();
      li.appendChild(when);
      list.appendChild(li);
    }
    $("alerts").replaceWith(list);
    if (!document.body.dataset.ws) await pollProducts();
  } catch (e) {
    $("live").textContent = "replica unreachable";
  }
}

$("filter").addEventListener("input", queueRender);
const wsPath = document.body.dataset.ws;
if (wsPath) {
  connect(wsPath);
} else {
  $("live").textContent = "polling";
}
refresh();
setInterval(refresh, 2000);

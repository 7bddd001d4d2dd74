// branchpoint viewer. Everything an agent wrote is untrusted: it reaches the page only as
// text (text nodes, textContent), never as HTML, and no URL is ever built from it except
// our own "#/..." routes with the id percent-encoded. The page runs under a CSP that
// allows no inline script.
"use strict";

const TOKEN_KEY = "branchpoint.token";
const OPTS_KEY = "branchpoint.options";
const PAGE = 50;
const CHILD_CHUNK = 200; // children rendered per "show more"

// --- small DOM helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) append(node, c);
  return node;
}

function append(node, c) {
  if (c === null || c === undefined || c === false) return;
  if (Array.isArray(c)) { for (const x of c) append(node, x); return; }
  node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function fmt(v, digits = 2) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function colour(v) {
  // red (0) through amber to green (1)
  return `hsl(${Math.round(Math.max(0, Math.min(1, v)) * 120)}, 62%, 40%)`;
}

function swatch(v, title) {
  const s = el("span", { class: v === null || v === undefined ? "swatch none" : "swatch", title: title || "value" }, fmt(v));
  if (v !== null && v !== undefined) s.style.backgroundColor = colour(v);
  return s;
}

function pretty(v) {
  if (typeof v === "string") {
    try { return JSON.stringify(JSON.parse(v), null, 2); } catch (e) { return v; }
  }
  return JSON.stringify(v, null, 2);
}

// --- state: options and token --------------------------------------------------------------

function loadOptions() {
  try { return JSON.parse(sessionStorage.getItem(OPTS_KEY)) || {}; } catch (e) { return {}; }
}
let options = loadOptions();

function optionParams() {
  const p = new URLSearchParams();
  for (const k of ["margin", "value", "sources", "judge_weight", "confidence"]) {
    if (options[k] !== undefined && options[k] !== "") p.set(k, options[k]);
  }
  return p;
}

function initOptionsForm() {
  const form = document.getElementById("options");
  for (const [k, v] of Object.entries(options)) if (form.elements[k]) form.elements[k].value = v;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    options = {};
    for (const k of ["margin", "value", "sources", "judge_weight", "confidence"]) options[k] = form.elements[k].value.trim();
    sessionStorage.setItem(OPTS_KEY, JSON.stringify(options));
    route();
  });
}

let pendingRetry = null;

function initTokenForm() {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, form.elements.token.value);
    form.elements.token.value = "";
    form.hidden = true;
    const retry = pendingRetry; pendingRetry = null;
    if (retry) retry(); else route();
  });
}

function showError(message) {
  const p = document.getElementById("error");
  p.textContent = message || "";
  p.hidden = !message;
}

class AuthNeeded extends Error {}

async function api(path, params, init) {
  const url = params && [...params].length ? `${path}?${params}` : path;
  const headers = Object.assign({}, (init && init.headers) || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(url, Object.assign({}, init || {}, { headers }));
  if (res.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new AuthNeeded("a token is needed");
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${res.status}: ${detail}`);
  }
  return res;
}

async function apiJson(path, params, init) { return (await api(path, params, init)).json(); }

function guard(fn) {
  return async (...args) => {
    try { showError(""); await fn(...args); } catch (e) {
      if (e instanceof AuthNeeded) { pendingRetry = () => guard(fn)(...args); return; }
      showError(String(e.message || e));
    }
  };
}

// --- routing -------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const view = clear(document.getElementById("view"));
  if (hash.startsWith("#/tree/")) {
    guard(renderTree)(view, decodeURIComponent(hash.slice("#/tree/".length)));
  } else if (hash.startsWith("#/summary")) {
    guard(renderSummary)(view);
  } else {
    const q = new URLSearchParams(hash.includes("?") ? hash.slice(hash.indexOf("?") + 1) : "");
    guard(renderList)(view, q);
  }
}

// --- the list of trees ---------------------------------------------------------------------

const FILTERS = [
  ["q", "search", "text"], ["env", "env", "text"], ["task", "task", "text"],
  ["origin", "origin", "text"], ["min_value", "min value", "number"],
  ["max_value", "max value", "number"],
];

async function renderList(view, query) {
  const form = el("form", { class: "filters", id: "filters" });
  for (const [name, text, type] of FILTERS) {
    const input = el("input", { name, type, size: 10, step: type === "number" ? "0.05" : null });
    input.value = query.get(name) || "";
    form.append(el("label", {}, text, input));
  }
  const pairs = el("select", { name: "has_pairs" },
    el("option", { value: "" }, "any"), el("option", { value: "true" }, "with pairs"),
    el("option", { value: "false" }, "without pairs"));
  pairs.value = query.get("has_pairs") || "";
  const finished = el("select", { name: "finished" },
    el("option", { value: "" }, "any"), el("option", { value: "true" }, "finished"),
    el("option", { value: "false" }, "unfinished"));
  finished.value = query.get("finished") || "";
  form.append(el("label", {}, "pairs", pairs), el("label", {}, "state", finished),
    el("button", { type: "submit" }, "filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim() !== "") q.set(k, String(v).trim());
    location.hash = `#/?${q}`;
  });
  const count = el("span", { class: "count", id: "tree-count" });
  const body = el("tbody");
  const prev = el("button", { type: "button", disabled: true }, "‹ previous");
  const next = el("button", { type: "button", disabled: true }, "next ›");
  view.append(form, el("table", { id: "trees" },
    el("thead", {}, el("tr", {},
      el("th", {}, "tree"), el("th", {}, "env"), el("th", {}, "task"), el("th", {}, "origin"),
      el("th", { class: "num" }, "nodes"), el("th", { class: "num" }, "leaves"),
      el("th", { class: "num" }, "value"), el("th", { class: "num" }, "pairs"),
      el("th", {}, "closed"), el("th", {}, "created"))), body),
  el("div", { class: "pager" }, prev, next, count));

  const cursors = [null];
  const load = guard(async () => {
    const params = optionParams();
    for (const [k, v] of query) params.set(k, v);
    params.set("limit", String(PAGE));
    const cursor = cursors[cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    const data = await apiJson("/v1/trees", params);
    clear(body);
    for (const t of data.trees) {
      body.append(el("tr", { class: "tree-row" },
        el("td", {}, el("a", { href: `#/tree/${encodeURIComponent(t.tree_id)}` }, t.tree_id)),
        el("td", {}, t.env), el("td", {}, t.task_id), el("td", {}, t.origin || ""),
        el("td", { class: "num" }, t.nodes), el("td", { class: "num" }, t.leaves),
        el("td", { class: "num" }, swatch(t.value)), el("td", { class: "num" }, t.pairs),
        el("td", {}, t.closed || "open"), el("td", { class: "muted" }, t.created_at.slice(0, 19))));
    }
    const first = (cursors.length - 1) * PAGE;
    count.textContent = `${data.total} trees` + (data.trees.length ? ` · showing ${first + 1}–${first + data.trees.length}` : "");
    prev.disabled = cursors.length <= 1;
    next.disabled = !data.next_cursor;
    next.onclick = () => { cursors.push(data.next_cursor); load(); };
    prev.onclick = () => { cursors.pop(); load(); };
  });
  await load();
}

// --- one tree ------------------------------------------------------------------------------

// A tree id may hold "/": it is the last part of the path, each segment percent-encoded.
function treePath(treeId) { return `/v1/trees/${treeId.split("/").map(encodeURIComponent).join("/")}`; }

async function renderTree(view, treeId) {
  const params = optionParams();
  params.set("depth", "2");
  params.set("limit", "400");
  const data = await apiJson(treePath(treeId), params);
  const state = { treeId, nodes: new Map(), children: new Map(), selected: null, data };
  absorb(state, data.nodes);
  const c = data.counts;
  const info = el("div", { class: "treeinfo" },
    el("h2", {}, data.tree_id),
    el("p", { class: "muted" },
      `env ${data.env} · task ${data.task_id} · origin ${data.origin || "–"} · ${data.closed ? "closed: " + data.closed : "unfinished"} · ${data.node_count} nodes · ${c.branching_points} branching points · ${c.pairs} pairs · dropped: ${c.dropped.tie} tie, ${c.dropped.under_margin} under margin, ${c.dropped.identical} identical` + (c.dropped.low_confidence ? `, ${c.dropped.low_confidence} low confidence` : "")),
    el("p", {},
      el("button", { type: "button", id: "show-pairs", onclick: guard(() => showPairs(state)) }, "this tree's pairs (DPO export)"),
      " ",
      el("button", { type: "button", id: "expand-all", onclick: guard(() => expandLevel(state)) }, "expand one more level")));
  const outline = el("div", { class: "outline", id: "outline" });
  const details = el("div", { class: "details", id: "details" },
    el("p", { class: "muted" }, "Click a node to see its prompt, action, observation and scores."));
  state.details = details;
  view.append(info, el("div", { class: "treeview" }, outline, details));
  const top = el("ul");
  outline.append(top);
  top.append(nodeItem(state, data.root));
  expand(state, data.root);
}

function absorb(state, nodes) {
  for (const n of nodes) {
    state.nodes.set(n.node_id, n);
    if (n.parent_id !== null) {
      let kids = state.children.get(n.parent_id);
      if (!kids) { kids = []; state.children.set(n.parent_id, kids); }
      if (!kids.includes(n.node_id)) kids.push(n.node_id);
    }
  }
  for (const kids of state.children.values()) kids.sort((a, b) => state.nodes.get(a).seq - state.nodes.get(b).seq);
}

function nodeItem(state, id) {
  const n = state.nodes.get(id);
  const li = el("li", { class: n.role || "", dataset: { node: id } });
  const toggle = el("button", { type: "button", class: "toggle", title: n.children ? "expand" : "" }, n.children ? "▸" : "·");
  if (n.children) toggle.addEventListener("click", guard(() => (li.classList.contains("open") ? collapse(state, id) : expand(state, id))));
  const lab = el("span", { class: "label", title: n.label }, n.label || (n.parent_id === null ? "(root: the task)" : "(no text)"));
  lab.addEventListener("click", guard(() => select(state, id)));
  const row = el("div", { class: "row" }, toggle,
    swatch(n.value, n.stderr !== null ? `value ${fmt(n.value, 3)} ± ${fmt(n.stderr, 3)} (${n.leaves} leaves)` : `value ${fmt(n.value, 3)} (${n.leaves} leaves)`),
    lab, el("span", { class: "nodeid" }, id));
  if (n.role) row.append(el("span", { class: `badge ${n.role}` }, n.role));
  if (n.branch) {
    row.append(n.branch.pair
      ? el("span", { class: "badge pair", title: `pair: ${n.branch.chosen} over ${n.branch.rejected}` }, `pair Δ${fmt(n.branch.margin)}`)
      : el("span", { class: "badge", title: "branching point without a pair" }, `no pair: ${n.branch.reason}`));
  }
  if (n.children) row.append(el("span", { class: "nodeid" }, `${n.children} children`));
  li.append(row);
  state.items = state.items || new Map();
  state.items.set(id, li);
  return li;
}

async function loadChildren(state, id) {
  const params = optionParams();
  params.set("node", id);
  params.set("depth", "2");
  params.set("limit", "400");
  const data = await apiJson(treePath(state.treeId), params);
  absorb(state, data.nodes);
}

async function expand(state, id) {
  const li = state.items.get(id);
  const n = state.nodes.get(id);
  if (!n.children || li.classList.contains("open")) return;
  if (!childrenKnown(state, id)) await loadChildren(state, id);
  const kids = state.children.get(id) || [];
  const ul = el("ul");
  li.append(ul);
  li.classList.add("open");
  li.querySelector(".toggle").textContent = "▾";
  renderChunk(state, ul, kids, 0);
}

function renderChunk(state, ul, kids, start) {
  const end = Math.min(kids.length, start + CHILD_CHUNK);
  for (let i = start; i < end; i++) ul.append(nodeItem(state, kids[i]));
  if (end < kids.length) {
    const more = el("li", { class: "more" }, el("button", { type: "button" }, `show ${Math.min(CHILD_CHUNK, kids.length - end)} more of ${kids.length - end}`));
    more.firstChild.addEventListener("click", () => { more.remove(); renderChunk(state, ul, kids, end); });
    ul.append(more);
  }
}

function collapse(state, id) {
  const li = state.items.get(id);
  const ul = li.querySelector(":scope > ul");
  if (ul) ul.remove();
  li.classList.remove("open");
  li.querySelector(".toggle").textContent = "▸";
}

function childrenKnown(state, id) {
  const n = state.nodes.get(id);
  return n.children_loaded && (state.children.get(id) || []).length >= n.children;
}

// Opens every closed node in view (200 at most): one request for all of them.
async function expandLevel(state) {
  const targets = [...state.items.entries()]
    .filter(([id, li]) => li.isConnected && !li.classList.contains("open") && state.nodes.get(id).children)
    .slice(0, 200).map(([id]) => id);
  if (targets.some((id) => !childrenKnown(state, id))) {
    const params = optionParams();
    params.set("depth", String(Math.max(...targets.map((id) => state.nodes.get(id).depth)) + 1));
    params.set("limit", "20000");
    absorb(state, (await apiJson(treePath(state.treeId), params)).nodes);
  }
  for (const id of targets) await expand(state, id);
}

function messageBox(m) {
  const box = el("div", { class: "msg" }, el("div", { class: "role" }, m.role || "?"));
  const content = m.content;
  if (typeof content === "string") box.append(el("div", { class: "text" }, content));
  else if (Array.isArray(content)) {
    for (const part of content) {
      box.append(el("div", { class: "text" }, part && part.type === "text" ? String(part.text) : `[${part && part.type}]`));
    }
  }
  for (const call of m.tool_calls || []) {
    const fn = call.function || {};
    box.append(el("div", { class: "call" }, el("strong", {}, `call ${fn.name}`),
      el("pre", {}, pretty(fn.arguments))));
  }
  if (m.tool_call_id) box.append(el("div", { class: "muted" }, `answers ${m.tool_call_id}`));
  return box;
}

function actionText(m) {
  if (!m) return "";
  const lines = [];
  if (typeof m.content === "string") lines.push(m.content);
  for (const call of m.tool_calls || []) lines.push(`call ${(call.function || {}).name}\n${pretty((call.function || {}).arguments)}`);
  return lines.join("\n");
}

// Word-level diff by longest common subsequence; tokens that only one side has are marked.
function diffTokens(a, b) {
  const x = a.split(/(\s+)/), y = b.split(/(\s+)/);
  if (x.length * y.length > 4e6) return [x.map((t) => [t, false]), y.map((t) => [t, false])];
  const dp = Array.from({ length: x.length + 1 }, () => new Uint32Array(y.length + 1));
  for (let i = x.length - 1; i >= 0; i--) {
    for (let j = y.length - 1; j >= 0; j--) {
      dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    }
  }
  const left = [], right = [];
  let i = 0, j = 0;
  while (i < x.length && j < y.length) {
    if (x[i] === y[j]) { left.push([x[i], false]); right.push([y[j], false]); i++; j++; }
    else if (dp[i + 1][j] >= dp[i][j + 1]) left.push([x[i++], true]);
    else right.push([y[j++], true]);
  }
  while (i < x.length) left.push([x[i++], true]);
  while (j < y.length) right.push([y[j++], true]);
  return [left, right];
}

function diffPre(tokens, cls) {
  const pre = el("pre", { class: "diff" });
  for (const [t, changed] of tokens) pre.append(changed && t.trim() ? el("mark", { class: cls }, t) : document.createTextNode(t));
  return pre;
}

async function sideBySide(state, branch) {
  const [chosen, rejected] = await Promise.all([branch.chosen, branch.rejected].map((id) => nodeDetail(state, id)));
  const [l, r] = diffTokens(actionText(chosen.action), actionText(rejected.action));
  return el("div", { class: "sidebyside", id: "pair-diff" },
    el("div", { class: "chosen" }, el("strong", {}, `chosen ${branch.chosen} `), swatch(branch.chosen_value), diffPre(l, "add")),
    el("div", { class: "rejected" }, el("strong", {}, `rejected ${branch.rejected} `), swatch(branch.rejected_value), diffPre(r, "del")));
}

async function nodeDetail(state, id) {
  const params = optionParams();
  params.set("tree_id", state.treeId);
  params.set("node_id", id);
  return apiJson("/v1/node", params);
}

async function select(state, id) {
  if (state.selected && state.items.get(state.selected)) state.items.get(state.selected).firstChild.classList.remove("selected");
  state.selected = id;
  state.items.get(id).firstChild.classList.add("selected");
  const d = await nodeDetail(state, id);
  const box = clear(state.details);
  box.append(el("h2", {}, `node ${d.node_id}`),
    el("p", {}, swatch(d.value), ` value ${fmt(d.value, 3)}`, d.stderr !== null ? ` ± ${fmt(d.stderr, 3)}` : "",
      ` from ${d.leaves} valued leaves · own score ${fmt(d.own_score, 3)} · depth ${d.depth} · done ${d.done}`));
  if (d.branch) {
    box.append(el("h3", {}, d.branch.pair ? `Branching point: pair (margin ${fmt(d.branch.margin)})` : `Branching point: no pair (${d.branch.reason})`));
    if (d.branch.pair) box.append(await sideBySide(state, d.branch));
  }
  box.append(el("h3", {}, "Scores"));
  if (!d.scores.length) box.append(el("p", { class: "muted" }, "no score of its own"));
  else {
    const tb = el("tbody");
    for (const s of d.scores) {
      tb.append(el("tr", {}, el("td", {}, s.source), el("td", { class: "num" }, swatch(s.value)),
        el("td", {}, s.detail ? el("pre", {}, pretty(s.detail)) : ""), el("td", { class: "muted" }, s.recorded_at.slice(0, 19))));
    }
    box.append(el("table", { class: "scores" }, el("thead", {}, el("tr", {}, el("th", {}, "source"), el("th", {}, "value"), el("th", {}, "detail (sub-goals, note)"), el("th", {}, "when"))), tb));
  }
  box.append(scoreForm(state, id));
  box.append(el("h3", {}, "Action"), d.action ? messageBox(d.action) : el("p", { class: "muted" }, "the root: no action"));
  box.append(el("h3", {}, "Observation"));
  if (d.observation) for (const m of d.observation) box.append(messageBox(m));
  else box.append(el("p", { class: "muted" }, "not executed"));
  const prompt = el("details", { id: "prompt" }, el("summary", {}, `Prompt: ${d.prompt.length} messages before this action`));
  for (const m of d.prompt) prompt.append(messageBox(m));
  box.append(prompt);
  if (d.produced_by) box.append(el("h3", {}, "Produced by"), el("pre", {}, pretty(d.produced_by)));
  if (d.info) box.append(el("h3", {}, "Info"), el("pre", {}, pretty(d.info)));
}

function scoreForm(state, id) {
  const form = el("form", { class: "scoreform", id: "score-form" },
    el("strong", {}, "Your score"),
    el("input", { name: "value", type: "number", min: "0", max: "1", step: "0.05", required: true, placeholder: "0–1" }),
    el("input", { name: "note", type: "text", placeholder: "note", size: 28 }),
    el("button", { type: "submit" }, "save human score"));
  form.addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const body = { tree_id: state.treeId, node_id: id, value: Number(form.elements.value.value), note: form.elements.note.value || null };
    await api("/v1/scores", null, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    route(); // values and pairs change: reload the tree
  }));
  return form;
}

async function showPairs(state) {
  const params = optionParams();
  params.set("tree", state.treeId);
  params.set("with_metadata", "true");
  const text = await (await api("/v1/export/dpo", params)).text();
  const box = clear(state.details);
  const lines = text.split("\n").filter((l) => l);
  box.append(el("h2", {}, `${lines.length} DPO pairs of this tree`));
  for (const line of lines) box.append(el("pre", { class: "pairline" }, pretty(line)));
}

// --- summary -------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function barChart(title, labels, values, colours) {
  const w = 360, h = 180, pad = 24, max = Math.max(1, ...values);
  const bw = (w - pad * 2) / Math.max(1, values.length);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "aria-label": title });
  values.forEach((v, i) => {
    const bh = (h - pad * 2) * v / max;
    const rect = svg("rect", { x: pad + i * bw + 2, y: h - pad - bh, width: Math.max(1, bw - 4), height: bh, fill: colours ? colours[i] : "#2f5fd0" });
    rect.append(svg("title", {}, `${labels[i]}: ${v}`));
    chart.append(rect, svg("text", { x: pad + i * bw + bw / 2, y: h - pad + 12, "text-anchor": "middle" }, labels[i]),
      svg("text", { x: pad + i * bw + bw / 2, y: h - pad - bh - 3, "text-anchor": "middle" }, v));
  });
  return el("div", { class: "chart" }, el("h3", {}, title), chart);
}

async function renderSummary(view) {
  const s = await apiJson("/v1/summary", optionParams());
  const st = s.stats;
  const bins = Array.from({ length: 10 }, (_, i) => (i / 10).toFixed(1));
  const binColours = bins.map((b) => colour(Number(b) + 0.05));
  const charts = el("div", { class: "charts", id: "charts" });
  for (const [env, counts] of Object.entries(s.leaf_scores)) charts.append(barChart(`leaf scores: ${env}`, bins, counts, binColours));
  charts.append(barChart("branching points: pairs and drops", ["pairs", "tie", "under margin", "identical", "low conf."],
    [st.pairs, st.dropped.tie, st.dropped.under_margin, st.dropped.identical, st.dropped.low_confidence || 0],
    ["#1a7f37", "#9aa3b2", "#d08c2f", "#c0362c", "#7a5cc0"]));
  charts.append(barChart("tree sizes (nodes)", s.tree_sizes.bins.slice(0, -1).map((b) => String(Math.round(b))), s.tree_sizes.counts));
  const tb = el("tbody");
  const row = (name, x) => el("tr", {}, el("td", {}, name), ...[x.trees, x.nodes, x.branching_points, x.pairs, x.dropped.tie, x.dropped.under_margin, x.dropped.identical].map((v) => el("td", { class: "num" }, v)));
  for (const [env, x] of Object.entries(st.by_env)) tb.append(row(env, x));
  tb.append(row("all", st));
  view.append(el("h2", {}, "Summary"), charts, el("table", { id: "stats" }, el("thead", {}, el("tr", {},
    ...["env", "trees", "nodes", "branching points", "pairs", "tie", "under margin", "identical"].map((t) => el("th", {}, t)))), tb));
}

// --- start ---------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  initOptionsForm();
  initTokenForm();
  route();
});

// hugie demo page: sends the form to POST /extract and draws the answer.
// Offsets in answers are Unicode code points into the exact string sent; JavaScript strings are
// UTF-16, so every offset goes through a code-point -> UTF-16 table before it touches the text.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "hugie.apiKey";
const SVG = "http://www.w3.org/2000/svg";

const EXAMPLES = [
  {name: "人名, 公司 (entity types)", mode: "entities", entities: "人名, 公司",
    text: "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"},
  {name: "person, location (English)", mode: "entities", entities: "person, location, organization",
    text: "Barack Obama met Angela Merkel in Berlin on Tuesday, then flew to Paris with Air Force One."},
  {name: "出生地, 毕业院校 (schema)", mode: "schema",
    schema: {entities: ["人物", "地点", "学校"],
      relations: [{subject: "人物", predicate: "出生地", object: "地点"},
        {subject: "人物", predicate: "毕业院校", object: "学校"}]},
    text: "周杰伦出生于台湾省新北市，毕业于淡江中学，是华语流行乐坛的代表人物之一。"},
  {name: "【人名】 (instruction)", mode: "instruction", instruction: "找到文章中所有【人名】类型的实体？",
    text: "昨天张三在北京开会，李四去了上海。"},
];

const state = {fileText: null, defaults: {}};

// ------------------------------------------------------------------ helpers
function apiUrl(path) { return new URL("../" + path, location.href).toString(); }

function headers(json) {
  const h = json ? {"Content-Type": "application/json"} : {};
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

/** u16[i] = the UTF-16 index of code point i (length = code points + 1). */
function codePointTable(text) {
  const u16 = [0];
  let at = 0;
  for (const ch of text) { at += ch.length; u16.push(at); }
  return u16;
}

function hue(type) {
  let h = 0;
  for (const ch of type) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return (h * 47) % 360;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function fmt(score) { return typeof score === "number" ? score.toFixed(2) : "–"; }

function optionalNumber(id) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw pageError(`${id}: "${raw}" is not a number`);
  return n;  // ranges are the server's to check: its error is shown as it comes
}

function optionalBool(id) {
  const v = $(id).value;
  return v === "" ? undefined : v === "true";
}

function pageError(message) { return {code: "page", message}; }

// ------------------------------------------------------------------ the form
function mode() { return document.querySelector("input[name=mode]:checked").value; }

function showMode() {
  const m = mode();
  for (const name of ["entities", "instruction", "schema"]) {
    for (const node of document.querySelectorAll(".mode-" + name)) node.hidden = name !== m;
  }
  for (const node of document.querySelectorAll(".not-instruction")) node.hidden = m === "instruction";
}

function textToSend() {
  // a file keeps its exact characters (CRLF included); the textarea turns line ends into LF
  return state.fileText !== null ? state.fileText : $("text").value;
}

function buildRequest() {
  const m = mode();
  const body = {text: textToSend()};
  if (m === "instruction") {
    body.instruction = $("instruction").value;
  } else if (m === "entities") {
    body.entities = $("entities").value.split(/[,，、;；\n]/).map((s) => s.trim()).filter(Boolean);
  } else {
    try {
      body.schema = JSON.parse($("schema").value);
    } catch (exc) {
      throw pageError(`the schema is not valid JSON: ${exc.message}`);
    }
  }
  const opts = {threshold: optionalNumber("threshold"), top_k: optionalNumber("top-k")};
  if (m !== "instruction") {
    Object.assign(opts, {language: $("language").value || undefined, flat_ner: optionalBool("flat-ner"),
      one_type_per_span: optionalBool("one-type")});
  }
  if (m === "schema") opts.relation_threshold = optionalNumber("relation-threshold");
  for (const [k, v] of Object.entries(opts)) if (v !== undefined) body[k] = v;
  return body;
}

function setFileText(text, name) {
  state.fileText = text;
  if (text !== null) $("text").value = text;
  const note = $("file-note");
  note.hidden = text === null;
  if (text !== null) {
    const crlf = (text.match(/\r\n/g) || []).length;
    note.textContent = `Sending ${name} exactly as read` + (crlf ? ` (${crlf} CRLF line ends kept).` : ".") +
      " Edit the text to send the box instead.";
  }
}

function applyExample(ex) {
  setFileText(null);
  $("text").value = ex.text;
  document.querySelector(`input[name=mode][value=${ex.mode}]`).checked = true;
  if (ex.entities) $("entities").value = ex.entities;
  if (ex.instruction) $("instruction").value = ex.instruction;
  if (ex.schema) $("schema").value = JSON.stringify(ex.schema, null, 2);
  showMode();
}

// ------------------------------------------------------------------ talking to the API
async function call(path, body) {
  const init = body === undefined ? {headers: headers(false)}
    : {method: "POST", headers: headers(true), body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(apiUrl(path), init);
  } catch (exc) {
    throw {code: "network", message: `could not reach the server (${exc.message})`};
  }
  let data = null;
  const raw = await response.text();
  try { data = JSON.parse(raw); } catch (exc) { /* not JSON: reported below */ }
  if (!response.ok) {
    const e = data && data.error ? data.error
      : {code: `HTTP ${response.status}`, message: raw.slice(0, 300) || response.statusText};
    if (response.status === 401) $("key-panel").open = true;
    throw {...e, status: response.status, data};
  }
  if (data === null) throw {code: "page", message: "the server's answer is not JSON"};
  return {status: response.status, data};
}

async function loadInfo() {
  try {
    const {data} = await call("info");
    const ex = data.extractor || {};
    state.defaults = ex;
    const name = ex.model ? String(ex.model).split(/[\\/]/).filter(Boolean).pop() : "model";
    $("model").textContent = data.ready
      ? `${name} · ${ex.backend || ""} · threshold ${ex.threshold} · relation threshold ${ex.relation_threshold}`
      : `model ${data.phase}…`;
    if (!data.ready) setTimeout(loadInfo, 1000);
    else if ($("threshold").value === "") $("threshold-range").value = ex.threshold;
    $("model").classList.remove("warn");
  } catch (e) {
    $("model").textContent = e.status === 401 ? "this server needs an API key" : `${e.code}: ${e.message}`;
    $("model").classList.add("warn");
  }
  if (document.body.dataset.state === "loading") document.body.dataset.state = "idle";
}

async function run(event) {
  if (event) event.preventDefault();
  clearError();
  let body;
  try {
    body = buildRequest();
  } catch (e) {
    return fail(e);
  }
  document.body.dataset.state = "busy";
  $("run").disabled = true;
  $("status").textContent = "extracting…";
  $("raw-request").textContent = JSON.stringify(body, null, 2);
  $("raw-response").textContent = "";
  $("raw-status").textContent = "";
  const started = performance.now();
  try {
    const {status, data} = await call("extract", body);
    $("raw-status").textContent = String(status);
    $("raw-response").textContent = JSON.stringify(data, null, 2);
    const shown = show(body, data);
    $("status").textContent = `${shown.spans} span${shown.spans === 1 ? "" : "s"}` +
      (shown.relations !== null ? `, ${shown.relations} relation${shown.relations === 1 ? "" : "s"}` : "") +
      ` · ${Math.round(performance.now() - started)} ms`;
    document.body.dataset.state = "done";
  } catch (e) {
    if (e.data !== undefined) {
      $("raw-status").textContent = String(e.status);
      $("raw-response").textContent = JSON.stringify(e.data, null, 2);
    }
    fail(e);
  } finally {
    $("run").disabled = false;
  }
}

function clearError() { $("error").hidden = true; }

function fail(e) {
  $("error-code").textContent = e.code || "error";
  $("error-message").textContent = e.message || String(e);
  $("error-id").textContent = e.request_id ? `request ${e.request_id}` : "";
  $("error").hidden = false;
  $("status").textContent = "";
  document.body.dataset.state = "error";
}

// ------------------------------------------------------------------ drawing the answer
/** Entities as [{type, text, start, end, score, role}] and relations as [{subject, predicate, object, score}]. */
function normalise(body, data) {
  const spans = [];
  let relations = null;
  if (Array.isArray(data.spans)) {
    const named = /[【\[]([^【】\[\]]+)[】\]][^【\[]*$/.exec(body.instruction || "");
    for (const s of data.spans) spans.push({...s, type: named ? named[1] : "span", role: "entity"});
  } else if (data.entities && !Array.isArray(data.entities)) {
    for (const [type, list] of Object.entries(data.entities)) {
      for (const s of list) spans.push({...s, type, role: "entity"});
    }
  } else {
    for (const s of data.entities || []) spans.push({...s, role: "entity"});
    relations = data.relations || [];
  }
  return {spans, relations};
}

function key(s) { return `${s.start}:${s.end}:${s.type}`; }

function show(body, data) {
  const text = body.text;  // offsets index exactly what was sent
  const {spans, relations} = normalise(body, data);
  const all = new Map(spans.map((s) => [key(s), s]));
  for (const r of relations || []) {
    for (const arg of [r.subject, r.object]) {
      const a = {...arg, type: arg.type || r.predicate, role: "argument"};
      if (!all.has(key(a))) all.set(key(a), a);
    }
  }
  const items = [...all.values()];
  const drawn = drawText(text, items);
  drawLegend(items);
  drawTable(items, drawn);
  drawRelations(relations);
  requestAnimationFrame(() => drawArcs(relations));
  return {spans: spans.length, relations: relations === null ? null : relations.length};
}

/** Marks nested in the text; a span crossing another one (neither holds the other) is listed, not drawn. */
function drawText(text, items) {
  const doc = $("doc");
  doc.classList.remove("placeholder");
  doc.replaceChildren();
  const u16 = codePointTable(text);
  const n = u16.length - 1;
  const ok = items.filter((s) => Number.isInteger(s.start) && Number.isInteger(s.end) &&
    s.start >= 0 && s.start < s.end && s.end <= n);
  ok.sort((a, b) => a.start - b.start || b.end - a.end || b.score - a.score);
  const root = {start: 0, end: n, children: []};
  const stack = [root];
  const drawn = new Set();
  for (const s of ok) {
    while (stack.length > 1 && stack[stack.length - 1].end <= s.start) stack.pop();
    const parent = stack[stack.length - 1];
    if (s.end > parent.end) continue;  // crosses the enclosing span
    const node = {...s, children: []};
    parent.children.push(node);
    stack.push(node);
    drawn.add(key(s));
  }
  const slice = (a, b) => text.slice(u16[a], u16[b]);
  const fill = (into, node) => {
    let at = node.start;
    for (const child of node.children) {
      if (child.start > at) into.append(slice(at, child.start));
      const mark = el("mark", {
        "class": child.role === "argument" ? "ent arg" : "ent",
        "data-start": child.start, "data-end": child.end, "data-type": child.type,
        "data-score": child.score, "data-label": `${child.type} ${fmt(child.score)}`,
        title: `${child.type} · score ${child.score} · characters ${child.start}–${child.end}`,
      });
      mark.style.setProperty("--hue", hue(child.type));
      fill(mark, child);
      into.append(mark);
      at = child.end;
    }
    if (node.end > at) into.append(slice(at, node.end));
  };
  fill(doc, root);
  if (!text.length) doc.append(el("span", {"class": "muted"}, "(empty text)"));
  return drawn;
}

function drawLegend(items) {
  const types = [...new Set(items.map((s) => s.type))];
  $("legend").replaceChildren(...types.map((t) => {
    const chip = el("span", {"class": "chip"}, t);
    chip.style.setProperty("--hue", hue(t));
    return chip;
  }));
}

function drawTable(items, drawn) {
  const rows = [...items].sort((a, b) => a.start - b.start || a.end - b.end).map((s) => {
    const type = el("td", {}, el("span", {"class": "chip"}, s.type));
    type.firstChild.style.setProperty("--hue", hue(s.type));
    const row = el("tr", {}, type, el("td", {}, s.text), el("td", {}, String(s.start)),
      el("td", {}, String(s.end)), el("td", {}, fmt(s.score)));
    if (!drawn.has(key(s))) {
      row.className = "undrawn";
      row.title = "overlaps another span: listed here, not highlighted";
    }
    return row;
  });
  $("spans").tBodies[0].replaceChildren(...rows);
  $("spans-box").hidden = rows.length === 0;
}

function argLabel(a) { return `${a.text} (${a.type || "?"})`; }

function drawRelations(relations) {
  $("relations-box").hidden = relations === null;
  if (relations === null) return;
  const list = relations.map((r, i) => {
    const item = el("li", {"data-rel": i}, el("span", {"class": "arg"}, argLabel(r.subject)), " ",
      el("span", {"class": "pred"}, `—${r.predicate}→`), " ", el("span", {"class": "arg"}, argLabel(r.object)),
      " ", el("span", {"class": "muted"}, fmt(r.score)));
    item.addEventListener("mouseenter", () => highlightRelation(i, true));
    item.addEventListener("mouseleave", () => highlightRelation(i, false));
    return item;
  });
  if (!list.length) list.push(el("li", {"class": "muted"}, "none found"));
  $("relations").replaceChildren(...list);
}

function highlightRelation(i, on) {
  for (const node of document.querySelectorAll(`[data-rel="${i}"]`)) node.classList.toggle("hi", on);
}

function findMark(arg) {
  const type = arg.type === undefined ? null : arg.type;
  for (const m of document.querySelectorAll("#doc mark")) {
    if (Number(m.dataset.start) === arg.start && Number(m.dataset.end) === arg.end &&
        (type === null || m.dataset.type === type)) return m;
  }
  return null;
}

/** An arrow from each relation's subject to its object, arching over the line. */
function drawArcs(relations) {
  const svg = $("arcs");
  const box = $("doc-wrap").getBoundingClientRect();
  svg.replaceChildren();
  svg.setAttribute("width", box.width);
  svg.setAttribute("height", box.height);
  if (!relations || !relations.length) return;
  const defs = document.createElementNS(SVG, "defs");
  const marker = document.createElementNS(SVG, "marker");
  for (const [k, v] of Object.entries({id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse"})) marker.setAttribute(k, v);
  const tip = document.createElementNS(SVG, "path");
  tip.setAttribute("d", "M0,0 L10,5 L0,10 z");
  marker.append(tip);
  defs.append(marker);
  svg.append(defs);
  const ends = new Map();  // arrows leaving or entering one mark fan out a little
  const spread = (mark, rect) => {
    const k = ends.get(mark) || 0;
    ends.set(mark, k + 1);
    return rect.left + rect.width / 2 + (k % 2 ? 1 : -1) * Math.ceil(k / 2) * 7 - box.left;
  };
  relations.forEach((r, i) => {
    const from = findMark(r.subject);
    const to = findMark(r.object);
    if (!from || !to || from === to) return;
    const a = from.getClientRects()[0];
    const b = to.getClientRects()[0];
    const x1 = spread(from, a);
    const y1 = a.top - box.top;
    const x2 = spread(to, b);
    const y2 = b.top - box.top;
    const lift = Math.min(24, 10 + Math.abs(x2 - x1) / 12) + (i % 3) * 4;
    const top = Math.min(y1, y2) - lift;
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", `M${x1},${y1} C${x1},${top} ${x2},${top} ${x2},${y2}`);
    path.setAttribute("class", "arc");
    path.setAttribute("marker-end", "url(#arrow)");
    path.setAttribute("data-rel", i);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", (x1 + x2) / 2);
    label.setAttribute("y", (Math.min(y1, y2) + 3 * top) / 4 - 3);  // just above the curve's apex
    label.setAttribute("class", "arc-label");
    label.setAttribute("data-rel", i);
    label.textContent = r.predicate;
    svg.append(path, label);
  });
}

// ------------------------------------------------------------------ wiring
function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORE, key.value); else sessionStorage.removeItem(KEY_STORE);
  });
  key.addEventListener("change", loadInfo);

  const select = $("example");
  EXAMPLES.forEach((ex, i) => select.append(el("option", {value: String(i)}, ex.name)));
  select.addEventListener("change", () => {
    if (select.value !== "") applyExample(EXAMPLES[Number(select.value)]);
    select.value = "";
  });
  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) setFileText(await file.text(), file.name);
    event.target.value = "";
  });
  $("text").addEventListener("input", () => setFileText(null));

  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
  $("threshold-range").addEventListener("input", () => { $("threshold").value = $("threshold-range").value; });
  $("threshold").addEventListener("input", () => {
    const v = Number($("threshold").value);
    if ($("threshold").value !== "" && Number.isFinite(v)) $("threshold-range").value = v;
  });
  $("form").addEventListener("submit", run);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(e);
  });
  new ResizeObserver(() => {
    const raw = $("raw-response").textContent;
    if (!raw || $("relations-box").hidden) return;
    try { drawArcs(JSON.parse(raw).relations); } catch (e) { /* an error body: nothing to draw */ }
  }).observe($("doc"));

  applyExample(EXAMPLES[0]);
  $("schema").value = JSON.stringify(EXAMPLES[2].schema, null, 2);
  loadInfo();
}

document.addEventListener("DOMContentLoaded", init);

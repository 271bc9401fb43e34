// SSE dashboard: opens one EventSource and renders what arrives.
// Event data is untrusted: it only ever reaches the DOM via textContent
// or as numbers in SVG attributes.
"use strict";

const HISTORY = 60;               // points kept for the chart
const RECREATE_DELAY_MS = 3000;   // wait before replacing a source the browser gave up on
const TICK_MS = 250;              // refresh rate of the "time since" display
const MAX_RAW_CHARS = 200;        // cap on how much of a malformed payload is shown
const MIN_SPAN = 10;              // smallest y range, so a flat line is not blown up
const VIEW_W = 600;               // must match the viewBox in index.html
const VIEW_H = 200;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

const ui = {
  state: $("state"),
  value: $("value"),
  events: $("events"),
  lastId: $("last-id"),
  since: $("since"),
  reconnects: $("reconnects"),
  src: $("src"),
  chart: $("chart"),
  chartMin: $("chart-min"),
  chartMax: $("chart-max"),
  tryCurl: $("try-curl"),
  tryJs: $("try-js"),
};

const stats = {
  events: 0,
  opens: 0,      // across every EventSource this page created
  lastSeen: 0,   // performance.now() of the last open or message; 0 = never
};

const values = [];   // last HISTORY finite values, oldest first
let source = null;   // the current EventSource
let retryTimer = 0;  // pending re-creation, if any

// The stream URL: ?src=<url> (may be another origin) or this server's /sse.
// Only http(s) is accepted; anything else falls back to the default.
function streamURL() {
  const param = new URLSearchParams(location.search).get("src");
  if (param) {
    try {
      const url = new URL(param, location.href);
      if (url.protocol === "http:" || url.protocol === "https:") return url.href;
    } catch {
      // Unparseable: use the default below.
    }
  }
  return new URL("/sse", location.href).href;
}

function setState(word) {
  ui.state.textContent = word;
  ui.state.dataset.state = word;
}

function connect(url) {
  retryTimer = 0;
  source = new EventSource(url);
  source.onopen = onOpen;
  source.onmessage = onMessage;
  source.onerror = onError;
}

function onOpen(event) {
  if (event.target !== source) return;
  stats.opens += 1;
  stats.lastSeen = performance.now();
  ui.reconnects.textContent = String(Math.max(0, stats.opens - 1));
  setState("open");
  tick();
}

function onMessage(event) {
  if (event.target !== source) return;
  stats.events += 1;
  stats.lastSeen = performance.now();
  ui.events.textContent = String(stats.events);
  ui.lastId.textContent = event.lastEventId || "—";

  const user = parseUser(event.data);
  if (user === null) {
    // Show what arrived, as text, and keep it out of the chart.
    ui.value.textContent = truncate(event.data, MAX_RAW_CHARS);
    ui.value.dataset.invalid = "";
  } else {
    ui.value.textContent = formatNumber(user);
    delete ui.value.dataset.invalid;
    values.push(user);
    if (values.length > HISTORY) values.shift();
    draw();
  }
  tick();
}

function onError(event) {
  const es = event.target;
  if (es !== source) return;
  // CONNECTING: the browser retries on its own (using the server's retry:).
  // CLOSED: it gave up for good (non-200, wrong content type), so we make a
  // new EventSource ourselves. That one cannot resend Last-Event-ID.
  if (es.readyState === EventSource.CLOSED && !retryTimer) {
    es.close();
    retryTimer = setTimeout(connect, RECREATE_DELAY_MS, es.url);
  }
  setState("reconnecting");
}

// Returns the payload's User as a finite number, or null for anything else.
function parseUser(data) {
  try {
    const msg = JSON.parse(data);
    const user = msg !== null && typeof msg === "object" ? msg.User : undefined;
    return typeof user === "number" && Number.isFinite(user) ? user : null;
  } catch {
    return null;
  }
}

function truncate(text, max) {
  return text.length > max ? text.slice(0, max) + "…" : text;
}

function formatNumber(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

// Time since the last sign of life the page can see. Keepalive comments
// are not exposed by EventSource, so a quiet but healthy stream still counts up.
function tick() {
  if (!stats.lastSeen) return;
  const s = (performance.now() - stats.lastSeen) / 1000;
  ui.since.textContent = (s < 60 ? s.toFixed(1) : String(Math.round(s))) + " s ago";
}

// The line and area are created once and only their geometry changes.
function createChart() {
  const area = document.createElementNS(SVG_NS, "path");
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("class", "line");
  ui.chart.append(area, line);
  return { area, line };
}

const chart = createChart();

// Redraws the last HISTORY values, newest at the right edge, y scaled to
// the visible range (with a little headroom) so small moves stay visible.
function draw() {
  const n = values.length;
  if (n === 0) return;

  const min = Math.min(...values);
  const max = Math.max(...values);
  ui.chartMin.textContent = formatNumber(min);
  ui.chartMax.textContent = formatNumber(max);

  const mid = (min + max) / 2;
  const half = Math.max(max - min, MIN_SPAN) / 2 * 1.1;
  const lo = mid - half;
  const span = 2 * half;

  const step = VIEW_W / (HISTORY - 1);
  const points = values.map((v, i) => {
    const x = (HISTORY - n + i) * step;
    const y = VIEW_H - ((v - lo) / span) * VIEW_H;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const firstX = ((HISTORY - n) * step).toFixed(1);

  chart.line.setAttribute("points", points.join(" "));
  chart.area.setAttribute("d", `M${firstX},${VIEW_H} L${points.join(" L")} L${VIEW_W},${VIEW_H} Z`);
  ui.chart.setAttribute("data-points", String(n));
}

// Shell-quotes a URL only when needed (e.g. it has & or ? in a query).
function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

function fillTryIt(url) {
  ui.tryCurl.textContent = `curl -N ${shellQuote(url)}`;
  ui.tryJs.textContent =
    `const es = new EventSource(${JSON.stringify(url)});\n` +
    "es.onmessage = (e) => console.log(e.lastEventId, JSON.parse(e.data).User);";
}

function main() {
  const url = streamURL();
  ui.src.textContent = url;
  fillTryIt(url);
  setState("connecting");
  connect(url);
  setInterval(tick, TICK_MS);
}

main();

// SSE dashboard: opens one EventSource, shows what arrives, and says when what it shows is old.
// Event data is untrusted: it only ever reaches the DOM as text, or as numbers in SVG attributes.
"use strict";

const HISTORY = 60;                 // values the chart keeps
const Y_MAX = 1000;                 // the producer's values run from 0 to this (maxUsers in dashboard.go)
const TICK_MS = 250;                // refresh rate of the "time since" displays
const MAX_RAW_CHARS = 200;          // cap on how much of a malformed payload is shown
const BACKOFF_FIRST_MS = 1000;      // first retry after the browser gave up on a stream
const BACKOFF_MAX_MS = 60000;       // longest wait between such retries
const ASSUMED_INTERVAL_MS = 1000;   // event interval the chart assumes until two events have arrived
const LONG_GAP = 3;                 // a gap this many steps long is a pause, not the stream's pace
const REPLAY_MS = 2000;             // values this soon after a Mercure stream first opens count as history
const MERCURE_PATH = ".well-known/mercure"; // a Mercure hub's URL, relative to the page
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

const ui = {
  announce: $("announce"),
  state: $("state"),
  stateNote: $("state-note"),
  value: $("value"),
  valueNote: $("value-note"),
  events: $("events"),
  lastId: $("last-id"),
  since: $("since"),
  sinceNote: $("since-note"),
  reconnects: $("reconnects"),
  reconnectsNote: $("reconnects-note"),
  src: $("src"),
  srcNote: $("src-note"),
  chart: $("chart"),
  chartLatest: $("chart-latest"),
  chartMin: $("chart-min"),
  chartMax: $("chart-max"),
  tryCurl: $("try-curl"),
  tryJs: $("try-js"),
};

const stream = {
  url: null,          // the stream's URL, without a resume parameter
  topics: false,      // a topic stream, whose reconnects replay what was missed
  mercure: false,     // a Mercure subscription: resumes with last_event_id=, first from the earliest event kept
  replaying: false,   // values may still be the history a Mercure hub replays on first open
  token: "",          // the page's own ?access_token=, passed on to the stream, never shown
  credentials: false, // send cookies: a topic stream on another origin, which may be private
  source: null,       // the current EventSource, if any
  state: "",          // connecting | open | reconnecting | refused
  opened: false,      // some EventSource of this page has been open
  lastId: "",         // id of the last event, sent back when the page reconnects by itself
  events: 0,
  lastEventAt: 0,     // Date.now() of the last event; 0 = none yet
  openedAt: 0,        // Date.now() when the stream last opened
  reconnects: 0,      // times an open stream was lost, whoever reconnects it
  lastLostAt: 0,      // Date.now() when the stream was last lost
  failures: 0,        // times in a row the browser gave up, for the back-off
  retryAt: 0,         // Date.now() of the next retry by the page; 0 = none pending
};

// Values for the chart, oldest first: { t: where on the time axis, arrived: performance.now()
// when it came, v: the value, resumed: the first after the stream was lost, replayed: from
// the history replayed on first open, back: how many steps before t such a value is drawn }.
const points = [];
// The pace of the stream as the chart sees it: step is the estimated time between events
// in ms (0 until two have arrived), pauses the long gaps in a row just seen, resumed that
// the stream was lost since the last value.
const pace = { step: 0, pauses: 0, resumed: false };
const startedAt = performance.now();
let tickTimer = 0;

// allowedOrigins returns the origins besides this page's own that the server lets ?src= name.
function allowedOrigins() {
  const meta = document.querySelector('meta[name="page-sources"]');
  return meta ? meta.content.split(/\s+/).filter(Boolean) : [];
}

// chooseStream returns the stream to open: this server's sse (relative, so a path prefix
// is kept), or ?src= if it names this origin or one the server allows. A refused ?src=
// comes back with the reason and is never requested.
function chooseStream() {
  const params = new URLSearchParams(location.search);
  const param = params.get("src");
  if (!param) {
    // ?match= reads the server's topics through the Mercure protocol.
    if (params.has("match")) {
      const url = new URL(MERCURE_PATH, location.href);
      for (const topic of params.getAll("match")) url.searchParams.append("match", topic);
      return { url };
    }
    // ?topic= reads the server's topics instead of a random stream of its own.
    const url = new URL("sse", location.href);
    for (const topic of params.getAll("topic")) url.searchParams.append("topic", topic);
    return { url };
  }
  let url;
  try {
    url = new URL(param, location.href);
  } catch {
    return { shown: param, refused: "Refused: not a URL", why: "the src parameter is not a URL" };
  }
  const shown = url.href;
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return { shown, refused: "Refused: not an http(s) URL", why: "the src parameter is not an http or https URL" };
  }
  if (url.origin !== location.origin && !allowedOrigins().includes(url.origin)) {
    return { shown, refused: "Refused: not in -page-sources", why: `this server does not allow streams from ${url.origin}` };
  }
  // Browsers block an http: stream on an https: page (mixed content), loopback excepted.
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  if (location.protocol === "https:" && url.protocol === "http:" && !loopback) {
    return { shown, refused: "Refused: http on an https page", why: "the browser blocks an http stream on an https page" };
  }
  return { url };
}

// setState shows the stream's state and tells assistive technology, only when it changes.
function setState(state, announcement) {
  if (stream.state === state) return;
  stream.state = state;
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  ui.announce.textContent = announcement;
  markStale(state !== "open");
}

// setProblem shows a one-line message about the stream under its URL; "" clears it.
function setProblem(text) {
  if (text) {
    ui.srcNote.textContent = text;
    ui.srcNote.dataset.problem = "";
  } else {
    ui.srcNote.textContent = stream.url && stream.url.origin === location.origin ? "this server" : "allowed by this server";
    delete ui.srcNote.dataset.problem;
  }
}

// markStale dims the value and the chart while no stream is open, with the time they are from.
function markStale(stale) {
  for (const el of [ui.value, ui.chart]) {
    if (stale && stream.events > 0) el.dataset.stale = "";
    else delete el.dataset.stale;
  }
  updateValueNote();
  describeChart();
}

// updateValueNote says whether the value is live, or what time it is from.
function updateValueNote() {
  if (stream.events === 0) ui.valueNote.textContent = "none yet";
  else if (stream.state === "open") ui.valueNote.textContent = "live";
  else ui.valueNote.textContent = "as of " + clock(stream.lastEventAt);
}

// connect opens a new EventSource. After the first, it asks the server to go on after the
// last id with ?lastEventID= (Mercure's last_event_id=), because a new EventSource cannot
// send Last-Event-ID itself. A Mercure subscription with no id yet asks for
// last_event_id=earliest, every event the hub keeps, so the chart starts full, not empty.
function connect() {
  stream.retryAt = 0;
  const url = new URL(stream.url);
  if (stream.mercure) url.searchParams.set("last_event_id", stream.lastId || "earliest");
  else if (stream.lastId !== "") url.searchParams.set("lastEventID", stream.lastId);
  if (stream.token) url.searchParams.set("access_token", stream.token);
  const es = new EventSource(url.href, { withCredentials: stream.credentials });
  es.onopen = onOpen;
  es.onmessage = onMessage;
  es.onerror = onError;
  es.addEventListener("reset", onReset);
  es.addEventListener("auth-expired", onAuthExpired);
  stream.source = es;
}

// onOpen marks the stream open and clears any message about it.
function onOpen(event) {
  if (event.target !== stream.source) return;
  stream.opened = true;
  stream.openedAt = Date.now();
  stream.failures = 0;
  setProblem("");
  setState("open", "Stream open.");
  tick();
}

// onMessage counts an event and shows its value, or its raw data if it has no numeric User.
function onMessage(event) {
  if (event.target !== stream.source) return;
  stream.events += 1;
  stream.lastEventAt = Date.now();
  stream.lastId = event.lastEventId;
  ui.events.textContent = String(stream.events);
  ui.lastId.textContent = event.lastEventId || "—";

  const user = parseUser(event.data);
  if (user === null) {
    // Show what arrived, as text, and keep it out of the chart.
    ui.value.textContent = truncate(event.data, MAX_RAW_CHARS);
    ui.value.dataset.invalid = "";
  } else {
    ui.value.textContent = formatNumber(user);
    delete ui.value.dataset.invalid;
    const arrived = performance.now();
    if (inReplay()) {
      // History comes without times, so its values are drawn one step apart (draw), the
      // newest where live values begin: each one so far, all replayed, moves a step back.
      for (const p of points) {
        p.t = arrived;
        p.back += 1;
      }
      points.push({ t: arrived, arrived, v: user, resumed: false, replayed: true, back: 0 });
    } else {
      points.push({ t: place(arrived), arrived, v: user, resumed: pace.resumed, replayed: false, back: 0 });
    }
    pace.resumed = false;
    if (points.length > HISTORY) points.shift();
    if (!document.hidden) draw();
  }
  updateValueNote();
  tick();
}

// inReplay says whether a value is drawn as part of the history a Mercure hub replays when
// the page first opens it at last_event_id=earliest. The hub writes that history as soon as
// the stream opens, in one burst, so every value of the stream's first REPLAY_MS counts: a
// live value among them goes one step after the history, where the stream's pace puts it
// anyway. The first value after that ends the replay for good.
function inReplay() {
  stream.replaying = stream.replaying && Date.now() - stream.openedAt < REPLAY_MS;
  return stream.replaying;
}

// onReset runs when the server could not resume a topic stream where the page left off
// (its history no longer holds the events since): what the chart shows has a hole, so it
// starts again, and the page says why.
function onReset(event) {
  if (event.target !== stream.source) return;
  stream.lastId = event.lastEventId;
  points.length = 0;
  pace.resumed = false;
  draw();
  ui.chart.dataset.values = "";
  setProblem("Missed events are gone; chart restarted");
}

// onAuthExpired runs when the server ended a private topic stream because its token
// expired. The browser reconnects by itself with its Last-Event-ID: with a cookie the
// application has renewed meanwhile, it goes on with nothing lost; else it is refused.
function onAuthExpired(event) {
  if (event.target !== stream.source) return;
  setProblem("Token expired; reconnecting");
}

// onError runs when the stream drops or cannot be opened. While the EventSource is
// CONNECTING the browser retries by itself, after the server's retry: delay. CLOSED means
// it gave up for good (an answer other than a 200 event stream): only then does the page
// open a new one, after an exponential back-off with jitter.
function onError(event) {
  const es = event.target;
  if (es !== stream.source) return;
  if (stream.state === "open") {
    // A topic stream's reconnect replays what was missed, so its line goes on unbroken.
    pace.resumed = !stream.topics;
    stream.reconnects += 1;
    stream.lastLostAt = Date.now();
    ui.reconnects.textContent = String(stream.reconnects);
    ui.reconnectsNote.textContent = "last at " + clock(stream.lastLostAt);
  }
  if (es.readyState === EventSource.CLOSED) {
    es.close();
    stream.source = null;
    if (stream.topics) {
      askWhy(es.url);
    } else {
      scheduleRetry();
      setProblem("Error answer; retrying");
    }
  } else {
    setProblem(stream.opened ? "Lost; reconnecting" : "Cannot connect; retrying");
  }
  if (stream.opened) setState("reconnecting", "Stream lost, reconnecting.");
  tick();
}

// askWhy runs when the browser gave up on a topic stream, the only kind that may be
// private: EventSource does not tell the status, so a HEAD of the same URL, with the same
// credentials, asks again. 401 or 403 means only a new token helps: the page says so and
// stops. Anything else is retried after a back-off.
async function askWhy(url) {
  let status = 0;
  try {
    const answer = await fetch(url, { method: "HEAD", cache: "no-store", credentials: stream.credentials ? "include" : "same-origin" });
    status = answer.status;
  } catch {
    // Unreachable, or refused by CORS: retried like any other failure.
  }
  if (status === 401 || status === 403) {
    setProblem(status === 401 ? "Not authorized: no valid token" : "Not authorized for this topic");
    setState("not authorized", "Stream refused: not authorized.");
  } else {
    scheduleRetry();
    setProblem("Error answer; retrying");
  }
  tick();
}

// scheduleRetry opens a new EventSource after 1, 2, 4 ... up to 60 s, each wait somewhere
// between half and all of that, so that pages the server turned away do not return together.
function scheduleRetry() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** stream.failures);
  const delay = ceiling / 2 + Math.random() * ceiling / 2;
  stream.failures += 1;
  stream.retryAt = Date.now() + delay;
  setTimeout(connect, delay);
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

// truncate shortens text to max characters, marking the cut.
function truncate(text, max) {
  return text.length > max ? text.slice(0, max) + "…" : text;
}

// formatNumber shows whole numbers as they are and others with two decimals.
function formatNumber(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

// clock formats a Date.now() value as the local time of day, hh:mm:ss.
function clock(ms) {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

// ago formats a duration in milliseconds as a short "time ago" that keeps to one line.
function ago(ms) {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return s.toFixed(1) + " s ago";
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}

// tick refreshes what changes with time alone: the time since the last event and the
// state's note (how long open, or when the page tries again).
function tick() {
  const now = Date.now();
  if (stream.lastEventAt) {
    ui.since.textContent = ago(now - stream.lastEventAt);
    ui.sinceNote.textContent = "at " + clock(stream.lastEventAt);
  }
  let note = "";
  switch (stream.state) {
    case "open":
      note = "since " + clock(stream.openedAt);
      break;
    case "refused":
      note = "not requested";
      break;
    case "not authorized":
      note = "a new token is needed";
      break;
    default:
      if (stream.retryAt) note = "next try in " + Math.max(0, Math.ceil((stream.retryAt - now) / 1000)) + " s";
      else if (stream.state === "reconnecting") note = "browser retrying";
      else note = "opening the stream";
  }
  ui.stateNote.textContent = note;
}

// startTicking runs tick while the page is visible; a background tab does no work.
function startTicking() {
  if (document.hidden) {
    clearInterval(tickTimer);
    tickTimer = 0;
    return;
  }
  tick();
  draw();
  if (!tickTimer) tickTimer = setInterval(tick, TICK_MS);
}

// svg creates an SVG element with the attributes given, and text if any.
function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten, for axis bounds that change rarely.
function niceCeil(x) {
  const p = 10 ** Math.floor(Math.log10(x));
  return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= x);
}

// place returns where on the time axis a value that arrived at the given time goes, and
// learns the stream's pace. A value goes where it arrived, but at least half a step after
// the one before: events made at a steady pace may arrive together, and would otherwise
// draw a vertical line.
function place(arrived) {
  const prev = points[points.length - 1];
  if (!prev) return arrived;
  const gap = arrived - prev.arrived;
  const long = gap > LONG_GAP * pace.step;
  if (pace.resumed || prev.replayed) {
    // How long the stream was lost, or how long after the replayed history the first live
    // value came, says nothing about its pace.
  } else if (pace.step === 0 || (long && pace.pauses > 0)) {
    // The first gap, or a second long one in a row: the pace itself has changed.
    pace.step = Math.max(gap, 1);
    pace.pauses = 0;
  } else if (long) {
    pace.pauses += 1;
  } else {
    pace.step += 0.1 * (gap - pace.step);
    pace.pauses = 0;
  }
  return Math.max(arrived, prev.t + pace.step / 2);
}

// draw renders the chart in the SVG's own pixels: y on a fixed scale from 0 to Y_MAX (or
// the next round bound if a stream sends more), x in seconds since the page opened, the
// last HISTORY values placed by their arrival time (replayed history a step apart, at the
// pace the chart knows now, so the run stretches as it learns the pace), the area filled
// down to the axis, and the line broken where the stream was lost.
function draw() {
  const width = ui.chart.clientWidth;
  const height = ui.chart.clientHeight;
  if (width === 0 || height === 0) return;
  const m = { left: 44, right: 12, top: 10, bottom: 24 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;

  const values = points.map((p) => p.v);
  const hi = values.length && Math.max(...values) > Y_MAX ? niceCeil(Math.max(...values)) : Y_MAX;
  const lo = values.length && Math.min(...values) < 0 ? -niceCeil(-Math.min(...values)) : 0;
  const y = (v) => m.top + plotH - ((v - lo) / (hi - lo)) * plotH;

  // The window spans HISTORY intervals, starts with the first value and moves with the last.
  const step = pace.step || ASSUMED_INTERVAL_MS;
  const at = (p) => p.t - p.back * step;
  const span = (HISTORY - 1) * step;
  const first = points.length ? at(points[0]) : startedAt;
  const last = points.length ? at(points[points.length - 1]) : startedAt;
  const right = Math.max(first + span, last);
  const left = right - span;
  const x = (t) => m.left + ((t - left) / span) * plotW;

  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(svg("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
    parts.push(svg("text", { class: "y-label", x: m.left - 6, y: y(v), "text-anchor": "end", "dominant-baseline": "middle" }, formatNumber(v)));
  }
  const seconds = span / 1000;
  const tickStep = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600].find((s) => seconds / s <= 6) || 3600;
  const from = (left - startedAt) / 1000;
  for (let s = Math.ceil(from / tickStep) * tickStep; s <= from + seconds + 1e-9; s += tickStep) {
    const px = x(startedAt + s * 1000);
    parts.push(svg("line", { class: "tick", x1: px, x2: px, y1: m.top + plotH, y2: m.top + plotH + 4 }));
    parts.push(svg("text", { class: "x-label", x: px, y: height - 4, "text-anchor": "middle" }, formatSeconds(s, tickStep)));
  }
  parts.push(svg("line", { class: "axis", x1: m.left, x2: width - m.right, y1: y(lo), y2: y(lo) }));

  // One segment per run of values from one stream, so an outage shows as a gap.
  const shown = points.filter((p) => at(p) >= left - 1);
  const segments = [];
  for (let i = 0; i < shown.length; i++) {
    if (i === 0 || shown[i].resumed) segments.push([]);
    segments[segments.length - 1].push(`${x(at(shown[i])).toFixed(1)},${y(shown[i].v).toFixed(1)}`);
  }
  const base = y(Math.max(lo, 0)).toFixed(1);
  let area = "";
  let line = "";
  for (const seg of segments) {
    const [x0] = seg[0].split(",");
    const [x1] = seg[seg.length - 1].split(",");
    area += `M${x0},${base} L${seg.join(" L")} L${x1},${base} Z `;
    line += `M${seg.join(" L")} `;
  }
  parts.push(svg("path", { class: "area", d: area.trim() }));
  parts.push(svg("path", { class: "line", d: line.trim() }));
  if (shown.length) {
    const p = shown[shown.length - 1];
    parts.push(svg("circle", { class: "dot", cx: x(at(p)).toFixed(1), cy: y(p.v).toFixed(1), r: 3 }));
  }

  ui.chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  ui.chart.replaceChildren(...parts);
  ui.chart.dataset.points = String(shown.length);
  ui.chart.dataset.values = points.map((p) => p.v).join(" ");
  describeChart();
}

// formatSeconds labels an x tick, with a decimal only when the ticks are closer than 1 s.
function formatSeconds(s, tickStep) {
  return (tickStep < 1 ? s.toFixed(1) : String(Math.round(s))) + " s";
}

// describeChart writes the chart's text alternative and the line above it: latest, min, max.
function describeChart() {
  if (points.length === 0) return;
  const values = points.map((p) => p.v);
  const latest = formatNumber(values[values.length - 1]);
  const min = formatNumber(Math.min(...values));
  const max = formatNumber(Math.max(...values));
  ui.chartLatest.textContent = latest;
  ui.chartMin.textContent = min;
  ui.chartMax.textContent = max;
  const when = stream.state === "open" ? "" : `, as of ${clock(stream.lastEventAt)}`;
  ui.chart.setAttribute("aria-label",
    `Chart of the last ${values.length} values${when}: latest ${latest}, min ${min}, max ${max}.`);
}

// Shell-quotes a URL only when needed (e.g. it has & or ? in a query).
function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

// fillTryIt shows the curl and JavaScript lines for the stream the page reads.
function fillTryIt(url) {
  ui.tryCurl.textContent = `curl -N ${shellQuote(url)}`;
  ui.tryJs.textContent =
    `const es = new EventSource(${JSON.stringify(url)});\n` +
    "es.onmessage = (e) => console.log(e.lastEventId, JSON.parse(e.data).User);";
}

// main picks the stream, opens it unless it is refused, and starts the clock.
function main() {
  const choice = chooseStream();
  document.addEventListener("visibilitychange", startTicking);
  new ResizeObserver(() => draw()).observe(ui.chart);
  if (choice.refused) {
    fillTryIt(new URL("sse", location.href).href);
    ui.src.textContent = choice.shown;
    setProblem(choice.refused);
    setState("refused", `Stream refused: ${choice.why}.`);
    startTicking();
    return;
  }
  stream.url = choice.url;
  // A Mercure subscription, ?match= or a ?src= of any hub, is a topic stream too.
  stream.mercure = choice.url.pathname.endsWith("/" + MERCURE_PATH);
  stream.replaying = stream.mercure;
  stream.topics = stream.mercure || choice.url.searchParams.has("topic");
  stream.token = new URLSearchParams(location.search).get("access_token") || "";
  stream.credentials = stream.topics && choice.url.origin !== location.origin;
  ui.src.textContent = choice.url.href;
  fillTryIt(choice.url.href);
  setProblem("");
  stream.state = "connecting";
  connect();
  startTicking();
}

main();

// fusebox live view: keeps one table of every destination up to date from the admin server's
// event stream (GET /events: a `snapshot` with all rows on every (re)connect, then `update`s
// with the rows that changed and the keys removed), trouble first, one page at a time.
//
// The page runs under a CSP with `require-trusted-types-for 'script'` and no inline styles, so
// every node is made with createElement and every text from the server (names of upstreams,
// destinations, endpoints, routes, reasons) is set as textContent; looks change through classes
// and the `hidden` attribute only. A row's `[[route]]`s are listed behind a disclosure; a route
// whose own breaker is not closed (or is forced) shows in the row's breaker cell and counts as
// trouble. With an admin token (kept in sessionStorage) each row gets "Force open" and "Reset"
// buttons that POST the admin API's breaker command, and so does each route with a breaker of
// its own (`&route=NAME`); the stream then shows the result.
'use strict';

const PAGE_SIZE = 50;
const TOKEN_KEY = 'fusebox.adminToken';
// Routes in trouble named in a row's breaker cell, at most; the rest are counted.
const ROUTE_TAGS = 3;
// The server sends at least a heartbeat every 15 s; silence for longer means a dead stream.
const STALE_MS = 35000;
const RETRY_MS = 2000;
const DASH = '–';

const STATE_RANK = { open: 0, 'half-open': 1 };

const view = {
  rows: new Map(),        // key -> row, as last received
  sorted: [],             // rows in display order (all of them, before the filter)
  dirty: true,            // rows changed since `sorted` was made
  filter: '',
  page: 0,
  offsetMs: 0,            // server clock - local clock, taken at each event's receipt
  windowS: null,
  token: readToken(),
  elements: new Map(),    // key -> {tr, cells, sig}, the rows of the page on screen
  openEndpoints: new Set(), // keys whose endpoint list the user opened
  openRoutes: new Set(),  // keys whose route list the user opened
  frame: 0,
};

const $ = (id) => document.getElementById(id);

// ---- the event stream ----------------------------------------------------------------------

let source = null;
let lastEventAt = 0;

function connect() {
  if (source) source.close();
  setConnection('connecting', 'connecting…');
  source = new EventSource('/events');
  source.addEventListener('open', () => setConnection('live', 'live'));
  source.addEventListener('error', onStreamError);
  source.addEventListener('snapshot', (e) => receive(e, applySnapshot));
  source.addEventListener('update', (e) => receive(e, applyUpdate));
}

function onStreamError() {
  if (source.readyState === EventSource.CLOSED) {
    // The browser gave up (e.g. a non-200 answer); try again ourselves.
    setConnection('down', 'disconnected, retrying…');
    setTimeout(connect, RETRY_MS);
  } else {
    setConnection('reconnecting', 'reconnecting…');
  }
}

function receive(event, apply) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch (err) {
    showMessage(`unreadable event from the server: ${err.message}`, true);
    return;
  }
  lastEventAt = Date.now();
  if (typeof data.time === 'number') view.offsetMs = data.time - Date.now();
  apply(data);
  setConnection('live', 'live');
  view.dirty = true;
  scheduleRender();
}

function applySnapshot(data) {
  view.rows.clear();
  if (typeof data.window_s === 'number') view.windowS = data.window_s;
  for (const row of data.rows || []) view.rows.set(row.key, row);
}

function applyUpdate(data) {
  for (const row of data.rows || []) view.rows.set(row.key, row);
  for (const key of data.removed || []) view.rows.delete(key);
}

function watchStaleness() {
  if (lastEventAt && Date.now() - lastEventAt > STALE_MS) {
    lastEventAt = 0;
    connect();
  }
}

function setConnection(kind, text) {
  const el = $('connection');
  const cls = `conn conn-${kind}`;
  if (el.className !== cls) el.className = cls;
  setText(el, text);
}

function showMessage(text, isError) {
  const el = $('message');
  el.classList.toggle('error', Boolean(isError));
  setText(el, text);
}

// ---- order and filter ----------------------------------------------------------------------

function needsAttention(row) {
  return row.forced !== null && row.forced !== undefined
    || (row.throttle_probability || 0) > 0
    || (row.endpoints || []).some((ep) => ep.state === 'ejected')
    || troubledRoutes(row).length > 0;
}

// The routes of a row whose own breaker is not closed, or is forced.
function troubledRoutes(row) {
  return (row.routes || []).filter((route) => route.breaker
    && (route.breaker.state !== 'closed' || route.breaker.forced));
}

function rank(row) {
  if (row.state in STATE_RANK) return STATE_RANK[row.state];
  return needsAttention(row) ? 2 : 3;
}

function desc(a, b) {
  return (b ?? -1) - (a ?? -1);
}

function compareText(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareRows(a, b) {
  return rank(a) - rank(b)
    || desc(a.error_ratio, b.error_ratio)
    || desc(a.reject_ratio, b.reject_ratio)
    || desc(a.rps, b.rps)
    || compareText(a.upstream, b.upstream)
    || compareText(a.destination, b.destination);
}

function ordered() {
  if (view.dirty) {
    view.sorted = Array.from(view.rows.values()).sort(compareRows);
    view.dirty = false;
  }
  if (!view.filter) return view.sorted;
  const needle = view.filter;
  return view.sorted.filter((row) =>
    row.upstream.toLowerCase().includes(needle) || row.destination.toLowerCase().includes(needle));
}

// ---- rendering -----------------------------------------------------------------------------

function scheduleRender() {
  if (!view.frame) view.frame = requestAnimationFrame(render);
}

function render() {
  view.frame = 0;
  const rows = ordered();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  view.page = Math.min(view.page, pages - 1);
  const first = view.page * PAGE_SIZE;
  const shown = rows.slice(first, first + PAGE_SIZE);
  renderRows(shown);
  // The Routes column only when a policy has routes: the table stays as narrow as before.
  const routed = rows.some((row) => row.routes && row.routes.length > 0);
  $('destinations').classList.toggle('no-routes', !routed);
  renderPager(first, shown.length, rows.length);
  renderSummary();
}

// Updates the page's rows in place (keeping focus and opened endpoint lists), then puts them in
// order; the DOM is reordered only when the order changed.
function renderRows(shown) {
  const now = serverNow();
  const keep = new Map();
  for (const row of shown) {
    const entry = view.elements.get(row.key) || makeRow(row);
    fillRow(entry, row, now);
    keep.set(row.key, entry);
  }
  view.elements = keep;
  const body = $('rows');
  const wanted = shown.map((row) => keep.get(row.key).tr);
  const same = wanted.length === body.children.length
    && wanted.every((tr, i) => body.children[i] === tr);
  if (!same) body.replaceChildren(...wanted);
  $('empty').hidden = shown.length > 0;
  $('actions-head').hidden = !view.token;
}

function renderPager(first, count, total) {
  const range = count ? `rows ${first + 1}–${first + count} of ${total}` : `rows 0–0 of ${total}`;
  const filtered = view.filter ? ` (filtered from ${view.rows.size})` : '';
  setText($('range'), range + filtered);
  $('prev').disabled = view.page === 0;
  $('next').disabled = first + count >= total;
}

function renderSummary() {
  let open = 0;
  let halfOpen = 0;
  let routes = 0;
  for (const row of view.rows.values()) {
    if (row.state === 'open') open += 1;
    else if (row.state === 'half-open') halfOpen += 1;
    routes += (row.routes || []).filter((r) => r.breaker && r.breaker.state !== 'closed').length;
  }
  const n = view.rows.size;
  const parts = [`${n} destination${n === 1 ? '' : 's'}`, `${open} open`, `${halfOpen} half-open`];
  if (routes) parts.push(`${routes} route breaker${routes === 1 ? '' : 's'} tripped`);
  setText($('summary'), parts.join(' · '));
  const note = view.windowS ? `; rates over the last ${view.windowS} s` : '';
  setText($('caption'), `Destinations, trouble first${note}`);
}

const COLUMNS = ['upstream', 'destination', 'state', 'age', 'probe', 'reason', 'rps', 'errors',
  'rejected', 'latency', 'inflight', 'budget', 'tokens', 'totals', 'endpoints', 'routes', 'actions'];
const NUMERIC = new Set(['rps', 'errors', 'rejected', 'latency', 'inflight', 'budget', 'tokens',
  'totals']);

function makeRow(row) {
  const tr = document.createElement('tr');
  const cells = {};
  for (const name of COLUMNS) {
    const cell = document.createElement(name === 'destination' ? 'th' : 'td');
    if (name === 'destination') cell.scope = 'row';
    cell.className = `col-${name}${NUMERIC.has(name) ? ' num' : ''}`;
    cells[name] = cell;
    tr.append(cell);
  }
  return { tr, cells, sig: {}, routeItems: [] };
}

function fillRow(entry, row, now) {
  const c = entry.cells;
  setText(c.upstream, row.upstream);
  rebuildIfChanged(entry, 'destination', row.destination,
    () => c.destination.replaceChildren(...breakable(row.destination)));
  setText(c.age, formatDuration(now - row.since_ms));
  setText(c.probe, nextProbe(row, now));
  setText(c.reason, row.reason_text || row.reason || DASH);
  setText(c.rps, row.rps === null || row.rps === undefined ? DASH : formatRate(row.rps));
  setText(c.errors, percent(row.error_ratio));
  setText(c.rejected, percent(row.reject_ratio));
  setText(c.latency, latency(row));
  const inflight = inFlight(row);
  rebuildIfChanged(entry, 'inflight', inflight.join('|'), () => fillLines(c.inflight, inflight));
  setText(c.budget, count(row.retry_budget_left));
  setText(c.tokens, count(row.rate_tokens_left));
  const sums = totals(row.totals);
  rebuildIfChanged(entry, 'totals', sums.join('|'), () => fillLines(c.totals, sums));
  const rowClass = `row-${row.state}`;
  if (entry.tr.className !== rowClass) entry.tr.className = rowClass;
  c.actions.hidden = !view.token;
  rebuildIfChanged(entry, 'state', stateSig(row), () => fillState(c.state, row));
  rebuildIfChanged(entry, 'endpoints', endpointsSig(row, now),
    () => fillEndpoints(c.endpoints, row));
  fillRoutes(entry, row, now);
  rebuildIfChanged(entry, 'actions', view.token ? 'on' : 'off', () => fillActions(c.actions, row));
}

function rebuildIfChanged(entry, part, sig, build) {
  if (entry.sig[part] === sig) return;
  entry.sig[part] = sig;
  build();
}

// What the endpoints cell shows: the endpoints, and the second while one is ejected (its time
// left counts down).
function endpointsSig(row, now) {
  const endpoints = row.endpoints || [];
  const ticking = endpoints.some((ep) => ep.state === 'ejected');
  return JSON.stringify(endpoints) + (ticking ? Math.floor(now / 1000) : '');
}

function stateSig(row) {
  const routes = troubledRoutes(row).map((r) => [r.name, r.breaker.state, r.breaker.forced]);
  return [row.state, row.forced, row.mode, row.throttle_probability, JSON.stringify(routes)]
    .join('|');
}

// The breaker cell: a badge whose text is the state, then "forced …" and the mode when it is
// not enforce (with the refusal probability when throttling), then each route whose own
// breaker is not closed or is forced ("route reports open").
function fillState(cell, row) {
  const parts = [tag('span', `badge badge-${row.state}`, row.state)];
  if (row.forced) parts.push(tag('span', 'tag tag-forced', `forced ${row.forced}`));
  if (row.mode && row.mode !== 'enforce') {
    let text = row.mode;
    if (row.mode === 'throttle' && typeof row.throttle_probability === 'number') {
      text += ` ${Math.round(row.throttle_probability * 100)}%`;
    }
    parts.push(tag('span', `tag tag-mode tag-${row.mode}`, text));
  }
  const troubled = troubledRoutes(row);
  for (const route of troubled.slice(0, ROUTE_TAGS)) {
    const b = route.breaker;
    parts.push(tag('span', `tag tag-route tag-route-${b.state}`,
      `route ${route.name} ${b.forced ? `forced ${b.forced}` : b.state}`));
  }
  if (troubled.length > ROUTE_TAGS) {
    parts.push(tag('span', 'tag tag-route', `+${troubled.length - ROUTE_TAGS} more routes`));
  }
  cell.replaceChildren(...parts);
}

// "3/4 ready" with a disclosure listing each endpoint; the <details> is made once per row and
// then only its contents change, so an opened list stays open (and focused) across updates.
function fillEndpoints(cell, row) {
  const endpoints = row.endpoints || [];
  if (endpoints.length === 0) {
    cell.replaceChildren(DASH);
    return;
  }
  let details = cell.firstElementChild;
  if (!details || details.tagName !== 'DETAILS') {
    details = makeDetails(row.key, view.openEndpoints);
    cell.replaceChildren(details);
  }
  const ready = endpoints.filter((ep) => ep.state === 'ready').length;
  const [summary, list] = details.children;
  summary.classList.toggle('degraded', ready < endpoints.length);
  setText(summary, `${ready}/${endpoints.length} ready`);
  list.replaceChildren(...endpoints.map(endpointItem));
}

// A disclosure that stays open across rebuilds while its row's key is in `opened`.
function makeDetails(key, opened) {
  const details = document.createElement('details');
  details.open = opened.has(key);
  details.addEventListener('toggle', () => {
    if (details.open) opened.add(key);
    else opened.delete(key);
  });
  details.append(document.createElement('summary'), document.createElement('ul'));
  return details;
}

// "127.0.0.2:8080 ejected 40s more · 10 ok · 2 failed": the endpoint, its state (and what is
// left of an ejection), its latency estimate when the server sends one, its tries by result.
function endpointItem(ep) {
  const li = document.createElement('li');
  const left = ejectionLeft(ep);
  const state = left === null ? ep.state : `${ep.state} ${formatDuration(left + 999)} more`;
  const words = [`${ep.successes} ok`, `${ep.failures} failed`];
  if (typeof ep.ewma_us === 'number') words.unshift(formatMicros(ep.ewma_us));
  if (ep.pending) words.push(`${ep.pending} pending`);
  li.append(tag('span', 'endpoint', ep.endpoint), ' ',
    tag('span', `ep-state ep-${ep.state}`, state), ` · ${words.join(' · ')}`);
  return li;
}

// Time left of an endpoint's ejection: `ejected_for_ms`, or `ejected_until_ms` (epoch ms) on
// the server's clock; null when it is not ejected.
function ejectionLeft(ep) {
  if (typeof ep.ejected_for_ms === 'number') return ep.ejected_for_ms;
  if (typeof ep.ejected_until_ms === 'number') {
    return Math.max(0, ep.ejected_until_ms - serverNow());
  }
  return null;
}

// "2 routes · 1 open" with a disclosure listing each route: its name, what it matches, its
// breaker (the destination's, or its own: state, time in it, reason, next probe) and, with a
// token, Force open and Reset for its own breaker. The list is rebuilt only when the routes or
// the token change; each own breaker's words are then updated in place, so buttons keep focus.
function fillRoutes(entry, row, now) {
  const cell = entry.cells.routes;
  const routes = row.routes || [];
  const shape = routes.map((r) => [r.name, r.matches, Boolean(r.breaker)]);
  rebuildIfChanged(entry, 'routes', JSON.stringify(shape) + (view.token ? '|on' : ''), () => {
    entry.routeItems = routes.map((route) => routeItem(row, route));
    if (routes.length === 0) {
      cell.replaceChildren(DASH);
      return;
    }
    const details = makeDetails(row.key, view.openRoutes);
    details.lastElementChild.replaceChildren(...entry.routeItems.map((item) => item.li));
    cell.replaceChildren(details);
  });
  if (routes.length === 0) return;
  const troubled = troubledRoutes(row);
  const summary = cell.firstElementChild.firstElementChild;
  summary.classList.toggle('degraded', troubled.length > 0);
  const counts = new Map();
  for (const route of troubled) {
    const b = route.breaker;
    const word = b.forced ? `forced ${b.forced}` : b.state;
    counts.set(word, (counts.get(word) || 0) + 1);
  }
  const words = [`${routes.length} route${routes.length === 1 ? '' : 's'}`];
  for (const [word, n] of counts) words.push(`${n} ${word}`);
  setText(summary, words.join(' · '));
  routes.forEach((route, i) => {
    const item = entry.routeItems[i];
    if (!route.breaker) return;
    const b = route.breaker;
    const cls = `route-breaker route-${b.state}`;
    if (item.breaker.className !== cls) item.breaker.className = cls;
    setText(item.breaker, routeBreakerText(b, now));
  });
}

// One route's list item: "reports POST path_prefix /v1/reports · own breaker …", and its
// buttons when its breaker is its own and a token is in use.
function routeItem(row, route) {
  const li = document.createElement('li');
  const breaker = tag('span', 'route-breaker', route.breaker ? '' : 'shared breaker');
  li.append(tag('span', 'route-name', route.name), ' ',
    tag('span', 'route-matches', route.matches), ' · ', breaker);
  if (route.breaker && view.token) {
    const target = { upstream: row.upstream, destination: row.destination, route: route.name };
    const who = `route ${route.name} of ${row.upstream} ${row.destination}`;
    const buttons = tag('span', 'route-actions', '');
    buttons.append(actionButton('Force open', 'force-open', who, target),
      actionButton('Reset', 'reset', who, target));
    li.append(' ', buttons);
  }
  return { li, breaker };
}

// "own breaker open 12s · consecutive_failures · next probe in 48s".
function routeBreakerText(b, now) {
  const words = [`own breaker ${b.state} ${formatDuration(now - b.since_ms)}`];
  if (b.forced) words.push(`forced ${b.forced}`);
  if (b.reason && !(b.forced && b.reason === 'forced')) words.push(b.reason);
  if (b.state === 'open' && !b.forced && typeof b.next_probe_at_ms === 'number') {
    const left = b.next_probe_at_ms - now;
    words.push(left <= 0 ? 'probe due' : `next probe in ${formatDuration(left + 999)}`);
  }
  return words.join(' · ');
}

function fillActions(cell, row) {
  if (!view.token) {
    cell.replaceChildren();
    return;
  }
  const who = `${row.upstream} ${row.destination}`;
  const target = { upstream: row.upstream, destination: row.destination };
  cell.replaceChildren(
    actionButton('Force open', 'force-open', who, target),
    actionButton('Reset', 'reset', who, target));
}

// A command's button; `target` is {upstream, destination} and, for a route's own breaker,
// `route`; `who` names it in the button's accessible name and in the message.
function actionButton(label, action, who, target) {
  const button = tag('button', `action action-${action}`, label);
  button.type = 'button';
  button.setAttribute('aria-label', `${label} ${who}`);
  button.addEventListener('click', () => sendCommand(button, action, target, who));
  return button;
}

// A host:port as text nodes with line-break opportunities (<wbr>) after each dot and before
// the port, so a long name wraps where it reads well; its text is unchanged.
function breakable(text) {
  const nodes = [];
  for (const part of text.split(/(?<=\.)|(?=:\d+$)/)) {
    if (nodes.length) nodes.push(document.createElement('wbr'));
    nodes.push(part);
  }
  return nodes;
}

function tag(name, className, text) {
  const el = document.createElement(name);
  if (className) el.className = className;
  el.textContent = text;
  return el;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// ---- formatting ----------------------------------------------------------------------------

function serverNow() {
  return Date.now() + view.offsetMs;
}

function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function nextProbe(row, now) {
  if (row.state === 'half-open') return 'probing';
  if (row.state !== 'open') return DASH;
  if (row.forced) return 'none: forced';
  if (typeof row.next_probe_at_ms !== 'number') return DASH;
  const left = row.next_probe_at_ms - now;
  return left <= 0 ? 'due' : `in ${formatDuration(left + 999)}`;
}

function formatMicros(us) {
  return us >= 1e6 ? `${(us / 1e6).toFixed(1)} s` : `${(us / 1000).toFixed(1)} ms`;
}

function formatRate(x) {
  return x >= 100 ? String(Math.round(x)) : x.toFixed(1);
}

function percent(ratio) {
  if (ratio === null || ratio === undefined) return DASH;
  const p = ratio * 100;
  return p > 0 && p < 0.1 ? '<0.1' : p.toFixed(1);
}

function ms(x) {
  if (x === null || x === undefined) return DASH;
  return x < 10 ? x.toFixed(1) : String(Math.round(x));
}

function latency(row) {
  if (row.p50_ms == null && row.p99_ms == null) return DASH;
  return `${ms(row.p50_ms)} / ${ms(row.p99_ms)}`;
}

// "3 / 20", and the adaptive mode on a second line.
function inFlight(row) {
  const limit = row.limit === null || row.limit === undefined ? DASH : String(row.limit);
  const lines = [`${row.in_flight} / ${limit}`];
  if (row.limit_mode && row.limit_mode !== 'fixed') lines.push(row.limit_mode);
  return lines;
}

function count(x) {
  return x === null || x === undefined ? DASH : String(Math.floor(x));
}

// Since start: requests on one line, errors and rejections on the next.
function totals(t) {
  if (!t) return [DASH];
  return [`${t.requests} req`, `${t.errors} err · ${t.rejected} rej`];
}

function fillLines(cell, lines) {
  cell.replaceChildren(...lines.map((line) => tag('span', '', line)));
}

// ---- admin token and commands --------------------------------------------------------------

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function storeToken(token) {
  view.token = token;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives as long as the page.
  }
  $('token-forget').hidden = !token;
  $('token').value = '';
  $('token').placeholder = token ? 'token in use' : 'read-only without one';
  scheduleRender();
}

async function sendCommand(button, action, target, who) {
  let url = `/upstreams/${encodeURIComponent(target.upstream)}/breaker`
    + `?action=${action}&destination=${encodeURIComponent(target.destination)}`;
  if (target.route) url += `&route=${encodeURIComponent(target.route)}`;
  button.disabled = true;
  const what = `${button.textContent} ${who}`;
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${view.token}` },
    });
    if (response.ok) {
      showMessage(`${button.textContent}: sent for ${who}`, false);
    } else {
      showMessage(`${what} failed: ${await errorText(response)}`, true);
    }
  } catch (err) {
    showMessage(`${what} failed: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
}

async function errorText(response) {
  const fallback = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    return typeof body.error === 'string' ? `${body.error} (${fallback})` : fallback;
  } catch {
    return fallback;
  }
}

// ---- start ---------------------------------------------------------------------------------

function bindControls() {
  $('filter').addEventListener('input', (e) => {
    view.filter = e.target.value.trim().toLowerCase();
    view.page = 0;
    scheduleRender();
  });
  $('prev').addEventListener('click', () => { view.page -= 1; scheduleRender(); });
  $('next').addEventListener('click', () => { view.page += 1; scheduleRender(); });
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    storeToken($('token').value.trim());
  });
  $('token-forget').addEventListener('click', () => storeToken(''));
}

function start() {
  bindControls();
  storeToken(view.token);
  connect();
  // Time in state and probe countdowns move every second without an event.
  setInterval(() => { scheduleRender(); watchStaleness(); }, 1000);
}

start();

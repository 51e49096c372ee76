// The browser lab's driver: bundles the single-page apps with esbuild, serves them, starts
// headless Chromium through puppeteer-core, logs each user in through the provider's forms,
// opens the user's tabs and cues page views on the schedule it was given. Every token-endpoint
// call a page makes is read off the browser's network events (what was presented, what came
// back); what the SDK says comes from the page. One JSON line per record goes to the records
// file; stdout carries the progress lines the Python side waits for.
//
// Usage: node lab.mjs CONFIG.json   (fields: see loadtests/browser_lab.py, lab_config)
import { appendFileSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import puppeteer from 'puppeteer-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const digest = (token) => (token ? createHash('sha256').update(String(token)).digest('hex').slice(0, 16) : null);
const now = () => Date.now() / 1000;
const write = (rec) => appendFileSync(cfg.records, `${JSON.stringify({ t: now(), ...rec })}\n`);
const say = (line) => process.stdout.write(`${line}\n`);
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, Math.max(0, ms)); });

// the app bundles, built now from the pinned packages
async function bundle(sdk) {
  const built = await esbuild.build({
    entryPoints: [path.join(here, 'spa', `${sdk}.js`)], bundle: true, format: 'esm', write: false,
    target: 'chrome120', minify: false, logLevel: 'silent',
  });
  return built.outputFiles[0].text;
}

function serve(app) {
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>refreshlab ${cfg.sdk}</title>
<script>window.LAB_CONFIG = ${JSON.stringify({ issuer: cfg.issuer, issuerOrigin: cfg.issuer.replace(/\/$/, ''), clientId: cfg.clientId, userinfo: cfg.userinfo, lock: Boolean(cfg.lock) })};</script>
<script type="module" src="/${cfg.sdk}/app.js"></script></head><body>refreshlab browser lab</body></html>`;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === `/${cfg.sdk}/app.js`) {
      res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
      res.end(app);
    } else if (url.pathname === `/${cfg.sdk}/`) {
      res.writeHead(200, { 'content-type': 'text/html', 'cache-control': 'no-store' });
      res.end(page);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => { server.listen(cfg.spaPort, '127.0.0.1', () => resolve(server)); });
}

const tokenPath = new URL(cfg.tokenEndpoint).pathname;

// every call to the token endpoint, read off the network: what the page presented and the answer.
// `inflight` holds the calls seen sent and not yet recorded; `recorded` counts each tab's records.
const inflight = new Map();
const recorded = new Map();
let onRecord = null;
const isTokenCall = (request) => request.method() === 'POST' && new URL(request.url()).pathname === tokenPath;

function watchTokenCalls(page, user, tab) {
  page.on('request', (request) => {
    if (!isTokenCall(request)) return;
    const form = new URLSearchParams(request.postData() || '');
    inflight.set(request, { t: now(), grant_type: form.get('grant_type'), presented: digest(form.get('refresh_token')), user, tab });
  });
  const finish = async (request, response) => {
    const call = inflight.get(request);
    if (!call) return;
    const rec = { ...call, kind: 'token_call', t_end: now(), status: response ? response.status() : 0 };
    try {
      if (response) {
        try {
          const body = JSON.parse(await response.text());
          Object.assign(rec, {
            error: body.error ?? null, error_description: body.error_description ?? null,
            received: digest(body.refresh_token), access: digest(body.access_token), expires_in: body.expires_in ?? null,
          });
        } catch (err) {
          rec.error = 'unreadable_answer';
        }
      }
      write(rec);
    } finally {
      inflight.delete(request);
      recorded.set(`${user}/${tab}`, (recorded.get(`${user}/${tab}`) ?? 0) + 1);
      if (onRecord) onRecord();
    }
  };
  page.on('requestfinished', (request) => finish(request, request.response()));
  page.on('requestfailed', (request) => finish(request, null));
}

// In every document of a tab, before its scripts: the page's own count of the token-endpoint
// calls it sent (kept in sessionStorage, per tab, across the login's navigations) and, once the
// run has ended, a refusal of new ones. The browser's network events reach the driver with a lag
// (most under load): the page's count says how many records the driver must still wait for.
function countTokenCalls(path) {
  const real = window.fetch.bind(window);
  const key = '__refreshlab_token_calls';
  const state = { open: 0, stopped: false, blocked: 0, waiters: [] };
  window.__labTokenCalls = state;
  state.sent = () => Number(sessionStorage.getItem(key) || 0);
  window.fetch = async (input, init) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? String(input) : input.url, location.href);
    const method = String(init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    if (method !== 'POST' || url.pathname !== path) return real(input, init);
    if (state.stopped) {
      state.blocked += 1;
      throw new TypeError('refreshlab: the run has ended, no more token calls');
    }
    sessionStorage.setItem(key, String(state.sent() + 1));
    state.open += 1;
    try {
      return await real(input, init);
    } finally {
      state.open -= 1;
      if (state.open === 0) state.waiters.splice(0).forEach((wake) => wake());
    }
  };
}

// The end of a run: no tab starts a token call any more, every call a tab sent is waited for
// (up to `boundS` in all) until the page has its answer and the driver has recorded it, so that
// the lab's records and the server's log cover the same calls. A tab whose calls are not all
// recorded at the bound is written down as `unsettled` (the run is then partial).
async function drain(tabs, boundS) {
  const began = now();
  const deadline = began + boundS;
  const sentByTab = await Promise.all(tabs.map(({ page }) => page.evaluate((ms) => {
    const s = window.__labTokenCalls;
    if (!s) return { sent: 0, open: 0, blocked: 0, missing: true };
    s.stopped = true;
    return new Promise((resolve) => {
      const done = () => resolve({ sent: s.sent(), open: s.open, blocked: s.blocked });
      if (s.open === 0) done();
      else { s.waiters.push(done); setTimeout(done, ms); }
    });
  }, boundS * 1000).catch((err) => ({ sent: null, error: String(err?.message ?? err) }))));
  const behind = () => tabs.filter(({ user, tab }, i) => (recorded.get(`${user}/${tab}`) ?? 0) < (sentByTab[i].sent ?? Infinity));
  if (behind().length > 0) {
    let timer = null;
    await Promise.race([
      new Promise((resolve) => { onRecord = () => { if (behind().length === 0) resolve(); }; }),
      new Promise((resolve) => { timer = setTimeout(resolve, Math.max(0, deadline - now()) * 1000); }),
    ]);
    clearTimeout(timer);
    onRecord = null;
  }
  for (const { user, tab } of behind()) {
    const i = tabs.findIndex((x) => x.user === user && x.tab === tab);
    write({ kind: 'unsettled', user, tab, sent: sentByTab[i].sent, recorded: recorded.get(`${user}/${tab}`) ?? 0,
      error: sentByTab[i].error ?? null });
  }
  for (const call of inflight.values()) write({ ...call, kind: 'unsettled' });
  write({ kind: 'drained', waited_s: now() - began, bound_s: boundS, unsettled: behind().length + inflight.size,
    blocked: sentByTab.reduce((n, x) => n + (x.blocked ?? 0), 0), sent: sentByTab.map((x) => x.sent) });
}

async function openTab(context, user, tab) {
  const page = await context.newPage();
  await page.evaluateOnNewDocument(countTokenCalls, tokenPath);
  await page.exposeFunction('labRecord', (rec) => write({ ...rec, user, tab }));
  watchTokenCalls(page, user, tab);
  page.on('pageerror', (err) => write({ kind: 'page_error', user, tab, error: String(err?.message ?? err) }));
  return page;
}

async function login(page, user) {
  await page.goto(`${cfg.spaOrigin}/${cfg.sdk}/`);
  // the provider's development forms: any login and password, then consent
  await page.waitForSelector('input[name="login"]', { timeout: 30000 });
  await page.type('input[name="login"]', `user-${user}`);
  await page.type('input[name="password"]', 'refreshlab');
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  await page.waitForSelector('button[type="submit"]', { timeout: 30000 });
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  await page.waitForFunction(() => window.lab && window.lab.ready, { timeout: 30000 });
}

async function openRest(context, user, first) {
  const tabs = [first];
  const open = async (tab) => {
    const page = await openTab(context, user, tab);
    await page.goto(`${cfg.spaOrigin}/${cfg.sdk}/`);
    await page.waitForFunction(() => window.lab && window.lab.ready, { timeout: 30000 });
    write({ kind: 'tab_open', user, tab, visibility: await page.evaluate(() => document.visibilityState) });
    return page;
  };
  const rest = Array.from({ length: cfg.tabs - 1 }, (_, i) => i + 1);
  if (cfg.tabOpening === 'burst') {
    tabs.push(...(await Promise.all(rest.map(open))));
  } else {
    for (const tab of rest) {
      if (cfg.tabOpening === 'spaced') await sleep(cfg.spacingS * 1000);
      tabs.push(await open(tab));
    }
  }
  return tabs;
}

async function pageViews(page, user, tab, schedule, endAt) {
  for (const [thinkS, burst] of schedule) {
    if (now() + thinkS >= endAt) break;
    await sleep(thinkS * 1000);
    const view = await page.evaluate((n) => window.lab.pageView(n), burst).catch((err) => ({ error: `driver: ${err.message}`, attempts: [] }));
    write({ kind: 'page_view', user, tab, burst, ...view });
  }
}

let browser = null;
let server = null;
async function shutdown(code) {
  try { if (browser) await browser.close(); } catch (err) { /* the browser is gone already */ }
  try { if (server) server.close(); } catch (err) { /* idem */ }
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { say('lab: stopping'); shutdown(130); });

async function main() {
  server = await serve(await bundle(cfg.sdk));
  const args = ['--no-sandbox', '--no-first-run', '--no-default-browser-check', '--disable-gpu'];
  // puppeteer turns Chrome's background-tab throttling off unless told not to
  const ignoreDefaultArgs = cfg.throttling === 'chrome'
    ? ['--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows', '--disable-renderer-backgrounding']
    : [];
  browser = await puppeteer.launch({
    executablePath: cfg.chromium, headless: true, args, ignoreDefaultArgs,
    handleSIGINT: false, handleSIGTERM: false,
  });
  say(`lab: browser pid ${browser.process()?.pid ?? 0}`);
  write({ kind: 'browser', version: await browser.version(), pid: browser.process()?.pid ?? null, throttling: cfg.throttling });
  const users = [];
  for (let user = 0; user < cfg.users; user += 1) {
    const context = await browser.createBrowserContext();
    const first = await openTab(context, user, 0);
    write({ kind: 'login_start', user, tab: 0 });
    await login(first, user);
    write({ kind: 'login', user, tab: 0 });
    write({ kind: 'tab_open', user, tab: 0, visibility: await first.evaluate(() => document.visibilityState) });
    // the user's other tabs right after its login, so each user's tabs open as a lone user's do
    users.push({ user, context, first, tabs: await openRest(context, user, first) });
  }
  const start = now();
  const endAt = start + cfg.durationS;
  write({ kind: 'start', visibility: await Promise.all(users.flatMap((u) => u.tabs.map((p) => p.evaluate(() => document.visibilityState)))) });
  say('lab: running');
  await Promise.all(users.flatMap((u) => u.tabs.map((page, tab) => pageViews(page, u.user, tab, cfg.schedule[u.user][tab], endAt))));
  await sleep((endAt - now()) * 1000);
  const visibility = await Promise.all(users.flatMap((u) => u.tabs.map((p) => p.evaluate(() => document.visibilityState))));
  write({ kind: 'end', visibility });
  await drain(users.flatMap((u) => u.tabs.map((page, tab) => ({ page, user: u.user, tab }))), cfg.drainS ?? 30);
  say('lab: done');
  await shutdown(0);
}

main().catch((err) => {
  write({ kind: 'lab_error', error: String(err?.stack ?? err) });
  say(`lab: failed: ${err?.message ?? err}`);
  shutdown(1);
});

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
// `inflight` holds the calls sent and not yet recorded, across all pages: at the end of the run
// the lab waits for it to empty before closing the browser (see drain).
const inflight = new Map();
let drainWaiter = null;
const settle = (request) => {
  inflight.delete(request);
  if (drainWaiter && inflight.size === 0) drainWaiter();
};
const isTokenCall = (request) => request.method() === 'POST' && new URL(request.url()).pathname === tokenPath;

function watchTokenCalls(page, user, tab) {
  page.on('request', (request) => {
    if (!isTokenCall(request)) return;
    const form = new URLSearchParams(request.postData() || '');
    const call = { t: now(), grant_type: form.get('grant_type'), presented: digest(form.get('refresh_token')), user, tab };
    // a paused request: the run has ended (interception is on only then), it never reaches the server
    if (request.interceptResolutionState().action !== 'disabled') {
      write({ ...call, kind: 'token_call_blocked' });
      return;
    }
    inflight.set(request, call);
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
      settle(request);
    }
  };
  page.on('requestfinished', (request) => finish(request, request.response()));
  page.on('requestfailed', (request) => finish(request, null));
}

// The end of a run: no token call starts any more (each page's new token-endpoint requests are
// aborted before they leave the browser, and recorded as blocked), and every call already sent is
// waited for, up to `boundS`, so that the lab's records and the server's log cover the same calls.
// A call still unanswered at the bound is recorded as `unsettled` (the run is then partial).
async function drain(pages, boundS) {
  const began = now();
  await Promise.all(pages.map(async (page) => {
    await page.setRequestInterception(true);
    page.on('request', (request) => {
      if (request.isInterceptResolutionHandled()) return;
      if (isTokenCall(request)) request.abort('blockedbyclient');
      else request.continue();
    });
  }));
  if (inflight.size > 0) {
    let timer = null;
    await Promise.race([
      new Promise((resolve) => { drainWaiter = resolve; }),
      new Promise((resolve) => { timer = setTimeout(resolve, boundS * 1000); }),
    ]);
    clearTimeout(timer);
  }
  for (const call of inflight.values()) write({ ...call, kind: 'unsettled' });
  write({ kind: 'drained', waited_s: now() - began, unsettled: inflight.size, bound_s: boundS });
}

async function openTab(context, user, tab) {
  const page = await context.newPage();
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
  await drain(users.flatMap((u) => u.tabs), cfg.drainS ?? 30);
  say('lab: done');
  await shutdown(0);
}

main().catch((err) => {
  write({ kind: 'lab_error', error: String(err?.stack ?? err) });
  say(`lab: failed: ${err?.message ?? err}`);
  shutdown(1);
});

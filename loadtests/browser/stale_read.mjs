// The stale-read window of a Web Locks lock over localStorage, measured in headless Chromium: TABS
// tabs of one origin each take the lock PER_TAB times, and inside it read a counter from
// localStorage and write it back plus one (auth0-spa-js's pattern: read the cache inside the lock,
// write the renewed tokens, release). A hand-over to another tab whose read returns less than the
// previous holder wrote is a stale read; the gap from that write to the read is reported for stale
// and fresh reads. GAP_MS: a random pause of up to that many ms between a tab's turns.
//
// Usage: node stale_read.mjs [PER_TAB=300] [TABS=2] [GAP_MS=0]   (REFRESHLAB_CHROMIUM or chromium)
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import puppeteer from 'puppeteer-core';
const N = Number(process.argv[2] || 300), TABS = Number(process.argv[3] || 2);
const page = `<!doctype html><script>
window.run = async (n, tab) => { const log = [];
  for (let i = 0; i < n; i++) {
    await navigator.locks.request('k', async () => {
      const t_read = performance.timeOrigin + performance.now();
      const v = Number(localStorage.getItem('v') || 0);
      localStorage.setItem('v', String(v + 1));
      log.push({ tab, t_read, read: v, t_write: performance.timeOrigin + performance.now() });
    });
    if (window.gapMs) await new Promise((ok) => setTimeout(ok, Math.random() * window.gapMs));
  }
  return log; };
</script>`;
const server = http.createServer((q, r) => { r.writeHead(200, { 'content-type': 'text/html' }); r.end(page); });
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/`;
const browser = await puppeteer.launch({ executablePath: process.env.REFRESHLAB_CHROMIUM || execFileSync('sh', ['-c', 'command -v chromium']).toString().trim(), headless: true, args: ['--no-sandbox'] });
const ctx = await browser.createBrowserContext();
const pages = [];
for (let i = 0; i < TABS; i++) { const p = await ctx.newPage(); await p.goto(url); pages.push(p); }
await pages[0].evaluate(() => localStorage.setItem('v', '0'));
const t0 = Date.now();
const GAP = Number(process.argv[4] || 0);
await Promise.all(pages.map((p) => p.evaluate((g) => { window.gapMs = g; }, GAP)));
const logs = (await Promise.all(pages.map((p, i) => p.evaluate((n, tab) => window.run(n, tab), N, i)))).flat();
logs.sort((a, b) => a.t_read - b.t_read);
let stale = 0, staleGaps = [], freshGaps = [], handovers = 0;
for (let i = 1; i < logs.length; i++) {
  const prev = logs[i - 1], cur = logs[i];
  if (prev.tab === cur.tab) continue; // same renderer: always fresh
  handovers += 1;
  const gap = cur.t_read - prev.t_write;
  if (cur.read < prev.read + 1) { stale += 1; staleGaps.push(gap); } else freshGaps.push(gap);
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(2) : null; };
console.log(JSON.stringify({ handovers, stale, stale_gap_ms: { p50: q(staleGaps, 0.5), p90: q(staleGaps, 0.9), max: q(staleGaps, 1) }, fresh_gap_ms: { min: q(freshGaps, 0), p10: q(freshGaps, 0.1), p50: q(freshGaps, 0.5) } }));
const final = await pages[0].evaluate(() => Number(localStorage.getItem('v')));
console.log(JSON.stringify({ tabs: TABS, per_tab: N, increments: N * TABS, final, lost: N * TABS - final, ms: Date.now() - t0 }));
await browser.close(); server.close();

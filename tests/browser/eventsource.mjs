// A real EventSource in headless Chromium, for tests/e2e/browser.rs.
//
//   QUERY_URL=http://127.0.0.1:PORT CHRONICLE_BROWSER_DIR=<dir holding node_modules> \
//     /usr/bin/node tests/browser/eventsource.mjs
//
// Launches Debian's /usr/bin/chromium through playwright-core (installed by script/lib.sh,
// ensure_browser; no browser is ever downloaded) with a fresh, empty profile, opens a page on
// QUERY_URL/healthz (so that the stream is same-origin: the query API sends no CORS headers),
// and then talks JSON lines:
//
//   stdin   {"open": "/v1/feed/stream", "events": ["post", "post_deleted"]}
//             opens `new EventSource(path)` in the page (one at a time; a second "open" closes
//             the first) listening to those event types
//   stdout  {"ready": true}                                  the page is loaded
//           {"state": "open"} / {"state": "error", "readyState": 0|2}   the EventSource's open
//                                                            and error events
//           {"event": "post", "data": "<raw data>", "lastEventId": "<id>"}   each message
//           {"fatal": "<message>"}                           then the script exits 1
//
// Closing stdin closes the browser, removes the profile and exits 0.

import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const print = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const fatal = (message) => {
  print({ fatal: String(message) });
  process.exit(1);
};

const queryUrl = process.env.QUERY_URL;
const browserDir = process.env.CHRONICLE_BROWSER_DIR;
if (!queryUrl) fatal('QUERY_URL is not set');
if (!browserDir) fatal('CHRONICLE_BROWSER_DIR is not set (script/test sets it; run script/bootstrap)');
let chromium;
try {
  ({ chromium } = createRequire(path.join(browserDir, 'package.json'))('playwright-core'));
} catch (err) {
  fatal(`cannot load playwright-core from ${browserDir}/node_modules (run script/bootstrap): ${err.message}`);
}

const profile = await mkdtemp(path.join(tmpdir(), 'chronicle-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
} catch (err) {
  await rm(profile, { recursive: true, force: true });
  fatal(`cannot launch /usr/bin/chromium: ${err.message}`);
}
const page = context.pages()[0] ?? (await context.newPage());
// What the page reports reaches the test as one line each.
await page.exposeFunction('report', print);
await page.goto(`${queryUrl}/healthz`);
print({ ready: true });

async function open(url, events) {
  await page.evaluate(({ url, events }) => {
    window.source?.close();
    const source = new EventSource(url);
    window.source = source;
    source.onopen = () => window.report({ state: 'open' });
    source.onerror = () => window.report({ state: 'error', readyState: source.readyState });
    for (const event of events) {
      source.addEventListener(event, (e) =>
        window.report({ event: e.type, data: e.data, lastEventId: e.lastEventId }));
    }
  }, { url, events });
}

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
  process.exit(0);
}
process.on('SIGTERM', shutdown);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  try {
    const command = JSON.parse(line);
    if (command.open) {
      await open(command.open, command.events ?? ['message']);
    } else {
      fatal(`unknown command: ${line}`);
    }
  } catch (err) {
    fatal(`${line}: ${err.message}`);
  }
});
lines.on('close', shutdown);

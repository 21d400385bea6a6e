#!/usr/bin/env node
// Drives the Fruits! web page in headless Chromium like a phone user would.
//
// Usage: node identify.cjs <base-url> <image-path> <expected-name-substring> <screenshot-path> [lang]
//
// Prints ONE JSON line on stdout:
//   {"top1", "names", "confident", "facts", "overflow", "console_errors"}
// Exit 0 when top1 contains the expected substring (case-insensitive), the facts card is
// visible, there is no horizontal overflow and no console error; 1 otherwise (reason on
// stderr); 2 on bad usage.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const TIMEOUT_MS = 30000;

function usage(msg) {
  if (msg) process.stderr.write(`identify.cjs: ${msg}\n`);
  process.stderr.write(
    'usage: node identify.cjs <base-url> <image-path> <expected-name-substring> <screenshot-path> [en|fr]\n',
  );
  process.exit(2);
}

async function main() {
  const [baseArg, image, expected, shot, langArg] = process.argv.slice(2);
  if (!baseArg || !image || expected === undefined || !shot) usage('missing arguments');
  const lang = (langArg || 'en').toLowerCase();
  if (lang !== 'en' && lang !== 'fr') usage(`unknown lang '${langArg}' (expected en or fr)`);
  if (!fs.existsSync(image)) usage(`image not found: ${image}`);
  const base = baseArg.replace(/\/+$/, '');
  const origin = new URL(base + '/').origin;

  const out = { top1: null, names: [], confident: null, facts: false, overflow: null, console_errors: [] };
  const reasons = [];

  let browser = null;
  try {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    const context = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
      locale: 'en-US',
    });
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    page.on('console', (m) => {
      if (m.type() === 'error') out.console_errors.push(m.text());
    });
    page.on('pageerror', (e) => out.console_errors.push(`uncaught: ${e.message}`));
    // The page must be self-contained: any request leaving the server's origin is an error.
    page.on('request', (r) => {
      const u = r.url();
      if (/^(data|blob):/.test(u)) return;
      try {
        if (new URL(u).origin !== origin) out.console_errors.push(`external request: ${u}`);
      } catch (_) {
        out.console_errors.push(`bad request url: ${u}`);
      }
    });

    const resp = await page.goto(base + '/', { waitUntil: 'load' });
    if (!resp || !resp.ok()) throw new Error(`GET ${base}/ answered ${resp ? resp.status() : 'nothing'}`);

    // Pick the language through the toggle, like a user would.
    await page.locator(`[data-testid="lang-toggle"] [data-lang="${lang}"]`).click();
    await page.waitForFunction((l) => document.documentElement.lang === l, lang);

    await page.locator('[data-testid="file-input"]').setInputFiles(path.resolve(image));

    // Wait for a terminal state: a result or an error box.
    await page.waitForFunction(
      () => {
        const vis = (sel) => {
          const e = document.querySelector(sel);
          return !!e && !e.hidden && e.getClientRects().length > 0;
        };
        return (document.body.dataset.state === 'done' && vis('[data-testid="result"]')) || vis('[data-testid="error"]');
      },
      null,
      { timeout: TIMEOUT_MS },
    );

    const error = page.locator('[data-testid="error"]');
    if (await error.isVisible()) {
      reasons.push(`error box shown: ${(await error.innerText()).replace(/\s+/g, ' ').trim()}`);
    } else {
      out.top1 = (await page.locator('[data-testid="top1-name"]').innerText()).trim();
      out.names = (await page.locator('[data-testid="prediction"] [data-testid="prediction-name"]').allInnerTexts())
        .map((s) => s.trim())
        .slice(0, 3);
      out.confident = !(await page.locator('[data-testid="not-sure"]').isVisible());
      out.facts = await page.locator('[data-testid="facts"]').isVisible();
    }

    // Let the preview image finish decoding so the screenshot is complete.
    await page
      .waitForFunction(() => {
        const img = document.querySelector('[data-testid="preview"]');
        return !img || !img.getAttribute('src') || (img.complete && img.naturalWidth > 0);
      }, null, { timeout: 5000 })
      .catch(() => {});

    out.overflow = await page.evaluate(() => document.scrollingElement.scrollWidth > window.innerWidth);

    fs.mkdirSync(path.dirname(path.resolve(shot)), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });
    await context.close();
  } catch (e) {
    reasons.push(String((e && e.message) || e).split('\n')[0]);
  } finally {
    if (browser) await browser.close().catch(() => {});
  }

  if (out.top1 !== null && !out.top1.toLowerCase().includes(expected.toLowerCase())) {
    reasons.push(`top1 ${JSON.stringify(out.top1)} does not contain ${JSON.stringify(expected)}`);
  }
  if (out.top1 !== null && !out.facts) reasons.push('facts card not visible');
  if (out.overflow !== false) reasons.push(out.overflow ? 'page overflows horizontally' : 'overflow not measured');
  if (out.console_errors.length) reasons.push(`${out.console_errors.length} console error(s)`);

  process.stdout.write(JSON.stringify(out) + '\n');
  if (reasons.length) {
    process.stderr.write(`identify.cjs: FAIL: ${reasons.join('; ')}\n`);
    process.exit(1);
  }
}

main().catch((e) => {
  process.stderr.write(`identify.cjs: ${(e && e.stack) || e}\n`);
  process.exit(1);
});

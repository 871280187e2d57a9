// Browser check of pgcloak's security console for test_console_browser.py:
// Debian's Chromium, driven by Playwright (playwright-core, no downloaded
// browser), loads <url>/console the way a person would and checks what the
// page shows and how readable it is.
//
//   node console_check.js <console-url> <screenshot.png> [--mode full|auth]
//                         [--expect JSON] [--timeout-ms N]
//
// Environment: CONSOLE_TOKEN, the metrics token when the endpoint needs one
// (never on the command line). The browser then sends it as HTTP Basic
// credentials (user "console", the token as password).
//
// --mode full (default) talks over stdin/stdout, one JSON document a line:
//   1. loads the page, waits (bounded) for the first data, then until the
//      sessions table lists every expected session and the denials table the
//      expected denial; runs the readability checks and takes a full-page
//      screenshot; prints {"event": "loaded", ...};
//   2. waits for a line "closed" on stdin (or EOF): the test has closed its
//      database sessions;
//   3. waits until those sessions leave the page and prints
//      {"event": "result", ...}: everything the test asserts on.
// With a token it first loads the page without credentials (expects 401),
// then logs in with HTTP Basic (see "login" in the result).
//
// --mode auth (token required) only probes the login: the status of /console
// without credentials, and with credentials given only when the server asks
// for them (the browser's login prompt), and prints {"event": "auth", ...}.
//
// --expect: {"sessions": [{"user": ..., "application_name": ...}],
//            "denial": {"user": ..., "rule": ...}, "top_reader": user}
//
// Exit status 0 whenever a result was printed, even one describing
// failures: the test judges it. Non-zero only when the browser itself broke.
'use strict'

const fs = require('fs')
const path = require('path')
const readline = require('readline')
const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
// Headless in a closed network, as root in CI: no sandbox, no GPU, and none
// of the background calls to Google that the network refuses.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]
const VIEWPORT = { width: 1280, height: 900 }

function parseArgs(argv) {
  const out = { mode: 'full', expect: {}, timeoutMs: 20000, positional: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--mode') out.mode = argv[++i]
    else if (a === '--expect') out.expect = JSON.parse(argv[++i])
    else if (a === '--timeout-ms') out.timeoutMs = Number(argv[++i])
    else out.positional.push(a)
  }
  if (out.positional.length < 1 || (out.mode === 'full' && out.positional.length < 2)) {
    throw new Error('usage: console_check.js <console-url> <screenshot.png> [--mode full|auth] [--expect JSON]')
  }
  out.url = out.positional[0]
  out.screenshot = out.positional[1]
  return out
}

function emit(doc) {
  process.stdout.write(JSON.stringify(doc) + '\n')
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Polls fn (evaluated in the page) until it returns something truthy.
// Bounded; returns { ok, value, last } where last is the final falsy value.
// A hand-rolled loop of page.evaluate rather than waitForFunction, so that
// nothing depends on how a predicate gets into a page under a strict CSP.
async function until(page, fn, arg, timeoutMs, intervalMs = 150) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await page.evaluate(fn, arg)
      if (last && last.ok) return { ok: true, value: last, waitedMs: timeoutMs - (deadline - Date.now()) }
    } catch (e) {
      last = { error: String(e && e.message ? e.message : e) }
    }
    if (Date.now() >= deadline) return { ok: false, last }
    await sleep(intervalMs)
  }
}

// ---- in-page helpers (serialised into the page by page.evaluate) -------

function pageState() {
  const table = (id) => {
    const body = document.getElementById(id)
    if (!body) return null
    return {
      count: Number(body.getAttribute('data-count')),
      rows: Array.from(body.rows).map((tr) => Array.from(tr.cells).map((td) => td.textContent.trim())),
    }
  }
  const banner = document.getElementById('banner')
  return {
    loaded: document.body.dataset.loaded === '1',
    stale: document.body.dataset.stale === '1',
    banner: banner && !banner.hidden ? banner.textContent : null,
    ready: (document.getElementById('ready') || {}).textContent,
    version: (document.getElementById('version') || {}).textContent,
    lastUpdate: (document.getElementById('last-update') || {}).textContent,
    sessionsCount: (document.getElementById('sessions-count') || {}).textContent,
    sessions: table('sessions-body'),
    topReaders: table('top-readers-body'),
    denials: table('denials-body'),
    alerts: table('alerts-body'),
  }
}

// Sessions columns: ID, User, Database, Client, Application, ...
// Denials columns: Time, User, Client, Rule, Message.
function expectationsMet(expect) {
  const body = (id) => document.getElementById(id)
  const rows = (id) => Array.from(body(id).rows).map((tr) => Array.from(tr.cells).map((td) => td.textContent.trim()))
  if (document.body.dataset.loaded !== '1') return { ok: false, why: 'not loaded' }
  const sessions = rows('sessions-body')
  const missing = (expect.sessions || []).filter(
    (s) => !sessions.some((r) => r[1] === s.user && r[4] === s.application_name)
  )
  if (missing.length) return { ok: false, why: 'sessions missing', missing, sessions }
  const denials = rows('denials-body')
  if (expect.denial && !denials.some((r) => r[1] === expect.denial.user && r[3] === expect.denial.rule)) {
    return { ok: false, why: 'denial missing', denials }
  }
  const readers = rows('top-readers-body')
  if (expect.top_reader && !readers.some((r) => r[0] === expect.top_reader)) {
    return { ok: false, why: 'top reader missing', readers }
  }
  return { ok: true, sessionCount: Number(body('sessions-body').getAttribute('data-count')) }
}

function sessionsLeft(arg) {
  const body = document.getElementById('sessions-body')
  const rows = Array.from(body.rows).map((tr) => Array.from(tr.cells).map((td) => td.textContent.trim()))
  const count = Number(body.getAttribute('data-count'))
  const ours = rows.filter((r) => arg.apps.includes(r[4]))
  return { ok: ours.length === 0 && count < arg.before, count, ours }
}

// Readability of everything a person can see. Returns violations, each with
// the text it concerns, so that a failure names what is unreadable.
function readability() {
  const MIN_BODY_PX = 14
  const MIN_TEXT_PX = 12
  const MIN_CONTRAST = 4.5
  const violations = []
  const info = {}

  function describe(el) {
    let s = el.tagName.toLowerCase()
    if (el.id) s += '#' + el.id
    if (typeof el.className === 'string' && el.className.trim()) s += '.' + el.className.trim().split(/\s+/).join('.')
    const p = el.closest('[id]')
    if (p && p !== el) s = '#' + p.id + ' ' + s
    return s
  }
  function parseColor(c) {
    const m = /^rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)$/.exec(c)
    if (!m) return null
    let a = m[4] === undefined ? 1 : m[4].endsWith('%') ? parseFloat(m[4]) / 100 : parseFloat(m[4])
    return [parseFloat(m[1]), parseFloat(m[2]), parseFloat(m[3]), a]
  }
  // Source over destination; dst is opaque.
  function over(src, dst) {
    const a = src[3]
    return [0, 1, 2].map((i) => src[i] * a + dst[i] * (1 - a)).concat([1])
  }
  // The colour behind el: its own and its ancestors' backgrounds, down to
  // the first opaque one (the canvas is white when none is).
  function background(el) {
    const layers = []
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e)
      if (cs.backgroundImage && cs.backgroundImage !== 'none') info.backgroundImages = (info.backgroundImages || 0) + 1
      const bg = parseColor(cs.backgroundColor)
      if (bg === null) return { error: 'unparsed background ' + cs.backgroundColor }
      if (bg[3] > 0) layers.push(bg)
      if (bg[3] >= 1) break
    }
    let c = [255, 255, 255, 1]
    for (let i = layers.length - 1; i >= 0; i--) c = over(layers[i], c)
    return { color: c }
  }
  function luminance(c) {
    const lin = (v) => {
      v /= 255
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4)
    }
    return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
  }
  function contrast(a, b) {
    const la = luminance(a)
    const lb = luminance(b)
    return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05)
  }
  function visible(el) {
    if (typeof el.checkVisibility === 'function') {
      return el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })
    }
    const cs = getComputedStyle(el)
    return el.getClientRects().length > 0 && cs.visibility === 'visible' && cs.opacity !== '0'
  }
  function add(kind, el, text, detail) {
    violations.push({ kind, element: describe(el), text: text.slice(0, 80), detail })
  }

  const bodyPx = parseFloat(getComputedStyle(document.body).fontSize)
  info.bodyFontPx = bodyPx
  if (!(bodyPx >= MIN_BODY_PX)) add('body-font-size', document.body, '(body)', bodyPx + 'px < ' + MIN_BODY_PX + 'px')

  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT)
  const seen = new Set()
  let checked = 0
  let minFont = Infinity
  let minContrast = Infinity
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue.replace(/\s+/g, ' ').trim()
    if (!text) continue
    const el = node.parentElement
    if (!el || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(el.tagName)) continue
    if (!visible(el)) continue
    const cs = getComputedStyle(el)
    const px = parseFloat(cs.fontSize)

    // Not clipped away: the text's box, cut by every clipping ancestor, must
    // keep at least one character's width and most of a line's height.
    const range = document.createRange()
    range.selectNodeContents(node)
    const r = range.getBoundingClientRect()
    let box = { left: r.left, top: r.top, right: r.right, bottom: r.bottom }
    for (let e = el; e && e !== document.documentElement; e = e.parentElement) {
      const ecs = getComputedStyle(e)
      if (ecs.overflowX === 'visible' && ecs.overflowY === 'visible') continue
      const er = e.getBoundingClientRect()
      box = {
        left: Math.max(box.left, er.left),
        top: Math.max(box.top, er.top),
        right: Math.min(box.right, er.right),
        bottom: Math.min(box.bottom, er.bottom),
      }
    }
    const w = box.right - box.left
    const h = box.bottom - box.top
    if (r.width < 1 || r.height < 1) {
      add('zero-size', el, text, 'text box ' + r.width.toFixed(1) + 'x' + r.height.toFixed(1) + 'px')
    } else if (w < Math.min(r.width, px * 0.5) - 0.5 || h < Math.min(r.height, px * 0.8) - 0.5) {
      add('clipped', el, text, 'visible part ' + Math.max(0, w).toFixed(1) + 'x' + Math.max(0, h).toFixed(1) + 'px of ' +
        r.width.toFixed(1) + 'x' + r.height.toFixed(1) + 'px')
    }

    if (seen.has(el)) continue
    seen.add(el)
    checked++
    minFont = Math.min(minFont, px)
    if (!(px >= MIN_TEXT_PX)) add('font-size', el, text, px + 'px < ' + MIN_TEXT_PX + 'px')

    const fg = parseColor(cs.color)
    const bg = background(el)
    if (!fg || bg.error) {
      add('color', el, text, 'cannot read colours: ' + cs.color + ' / ' + (bg.error || ''))
      continue
    }
    const ratio = contrast(over(fg, bg.color), bg.color)
    minContrast = Math.min(minContrast, ratio)
    if (ratio < MIN_CONTRAST) {
      add('contrast', el, text, ratio.toFixed(2) + ':1 < ' + MIN_CONTRAST + ':1 (' + cs.color + ' on rgb(' +
        bg.color.slice(0, 3).map(Math.round).join(', ') + '))')
    }
  }
  info.textElementsChecked = checked
  info.minFontPx = minFont
  info.minContrast = Math.round(minContrast * 100) / 100

  const sw = document.documentElement.scrollWidth
  info.scrollWidth = sw
  info.innerWidth = window.innerWidth
  if (sw > window.innerWidth) {
    add('horizontal-scroll', document.documentElement, '(page)', 'scrollWidth ' + sw + ' > innerWidth ' + window.innerWidth)
  }
  // Tables may scroll inside their own frame; not a violation, but worth knowing.
  info.tablesScrolling = Array.from(document.querySelectorAll('.table-wrap'))
    .filter((w) => !w.hidden && w.scrollWidth > w.clientWidth + 1)
    .map((w) => w.id + ' ' + w.scrollWidth + '>' + w.clientWidth)
  return { violations, info }
}

// Runs before any page script: collects CSP violations (they would also be
// console errors, but this names the directive).
function cspRecorder() {
  window.__cspViolations = []
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__cspViolations.push({
      directive: e.violatedDirective,
      blocked: e.blockedURI,
      source: e.sourceFile,
      line: e.lineNumber,
      sample: e.sample,
    })
  })
}

// ---- modes -------------------------------------------------------------

function credentials(token) {
  return { username: 'console', password: token }
}

async function newContext(browser, httpCredentials, extraHTTPHeaders) {
  const opts = { viewport: VIEWPORT, deviceScaleFactor: 1, locale: 'en-US', timezoneId: 'UTC', colorScheme: 'light' }
  if (httpCredentials) opts.httpCredentials = httpCredentials
  if (extraHTTPHeaders) opts.extraHTTPHeaders = extraHTTPHeaders
  return browser.newContext(opts)
}

// The status of <url> as a fresh browser context sees it.
async function statusOf(browser, url, httpCredentials, timeoutMs) {
  const ctx = await newContext(browser, httpCredentials)
  try {
    const page = await ctx.newPage()
    let res
    try {
      res = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs })
    } catch (e) {
      // A Basic challenge the browser cannot answer (no credentials, and
      // headless: no login prompt) ends the navigation with this error;
      // a person would see the prompt instead. Either way: refused.
      if (String(e.message).includes('ERR_INVALID_AUTH_CREDENTIALS')) return { status: 401, loaded: false, prompted: true }
      throw e
    }
    const status = res ? res.status() : null
    if (status !== 200) return { status, loaded: false }
    const loaded = await until(page, () => ({ ok: document.body && document.body.dataset.loaded === '1' }), null, 5000)
    return { status, loaded: loaded.ok }
  } finally {
    await ctx.close()
  }
}

async function authMode(browser, opts, token) {
  const anonymous = await statusOf(browser, opts.url, null, opts.timeoutMs)
  // Default httpCredentials: sent only in answer to a challenge the browser
  // understands, as a person's browser would after its login prompt.
  const challenged = await statusOf(browser, opts.url, credentials(token), opts.timeoutMs)
  emit({ event: 'auth', anonymous, challenged })
}

function waitForLine(word, timeoutMs) {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin })
    const done = (how) => {
      clearTimeout(timer)
      rl.close()
      resolve(how)
    }
    const timer = setTimeout(() => done('timeout'), timeoutMs)
    rl.on('line', (line) => {
      if (line.trim() === word) done('line')
    })
    rl.on('close', () => done('eof'))
  })
}

async function fullMode(browser, opts, token) {
  const out = { event: 'result', url: opts.url, screenshot: null, errors: [] }
  if (token) out.anonymous = await statusOf(browser, opts.url, null, opts.timeoutMs)

  // With a token: HTTP Basic, the token as password. First as a person's
  // browser does it, answering the server's challenge (httpCredentials);
  // if the browser cannot answer it (see --mode auth), with the header sent
  // on every request, as a browser that already holds the credentials.
  let ctx
  if (token) {
    const status = await statusOf(browser, opts.url, credentials(token), opts.timeoutMs)
    out.challenged = status
    if (status.status === 200) {
      out.login = 'challenge'
      ctx = await newContext(browser, credentials(token))
    } else {
      out.login = 'preemptive'
      ctx = await newContext(browser, null, {
        Authorization: 'Basic ' + Buffer.from('console:' + token).toString('base64'),
      })
    }
  } else {
    ctx = await newContext(browser, null)
  }
  const consoleMessages = []
  const pageErrors = []
  const failedRequests = []
  const badResponses = []
  const requests = []
  let recording = true
  ctx.on('console', (m) => {
    if (recording && (m.type() === 'error' || m.type() === 'warning')) {
      consoleMessages.push({ type: m.type(), text: m.text(), location: m.location() })
    }
  })
  await ctx.addInitScript(cspRecorder)
  const page = await ctx.newPage()
  page.on('pageerror', (e) => recording && pageErrors.push(String(e && e.stack ? e.stack : e)))
  page.on('request', (r) => recording && requests.push(r.url()))
  page.on('requestfailed', (r) => {
    if (recording) failedRequests.push({ url: r.url(), error: r.failure() ? r.failure().errorText : null })
  })
  page.on('response', (r) => {
    if (recording && r.status() >= 400) badResponses.push({ url: r.url(), status: r.status() })
  })

  const t0 = Date.now()
  const res = await page.goto(opts.url, { waitUntil: 'load', timeout: opts.timeoutMs })
  out.status = res ? res.status() : null
  out.headers = res ? await res.allHeaders() : {}

  const loaded = await until(page, () => ({ ok: document.body.dataset.loaded === '1' }), null, 10000)
  out.loadedMs = Date.now() - t0
  if (!loaded.ok) out.errors.push('body data-loaded never became 1 within 10 s: ' + JSON.stringify(loaded.last))

  const shown = loaded.ok ? await until(page, expectationsMet, opts.expect, 10000) : { ok: false }
  if (loaded.ok && !shown.ok) {
    out.errors.push('the expected sessions/denial did not show within 10 s: ' + JSON.stringify(shown.last))
  }
  out.sessionsBefore = shown.ok ? shown.value.sessionCount : null
  out.before = await page.evaluate(pageState)
  out.readability = await page.evaluate(readability)

  if (opts.screenshot) {
    fs.mkdirSync(path.dirname(opts.screenshot), { recursive: true })
    await page.screenshot({ path: opts.screenshot, fullPage: true })
    out.screenshot = opts.screenshot
  }
  emit({ event: 'loaded', ok: shown.ok, screenshot: out.screenshot })

  // The test closes its sessions now; the page must notice by itself.
  out.closedSignal = await waitForLine('closed', 30000)
  if (shown.ok) {
    const t1 = Date.now()
    const apps = (opts.expect.sessions || []).map((s) => s.application_name)
    const left = await until(page, sessionsLeft, { apps, before: out.sessionsBefore }, 10000)
    out.leftMs = Date.now() - t1
    out.sessionsLeft = left.ok
    if (!left.ok) out.errors.push('sessions did not leave the page within 10 s: ' + JSON.stringify(left.last))
  }
  out.after = await page.evaluate(pageState)
  out.csp = await page.evaluate(() => window.__cspViolations || null)

  recording = false
  out.consoleMessages = consoleMessages
  out.pageErrors = pageErrors
  out.failedRequests = failedRequests
  out.badResponses = badResponses
  out.requestCount = requests.length
  out.requestedPaths = Array.from(new Set(requests.map((u) => new URL(u).pathname))).sort()
  await ctx.close()
  emit(out)
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const token = process.env.CONSOLE_TOKEN || null
  if (opts.mode === 'auth' && !token) throw new Error('--mode auth needs CONSOLE_TOKEN')
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30000 })
  try {
    if (opts.mode === 'auth') await authMode(browser, opts, token)
    else if (opts.mode === 'full') await fullMode(browser, opts, token)
    else throw new Error('unknown --mode ' + opts.mode)
  } finally {
    await browser.close()
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n')
  process.exit(1)
})

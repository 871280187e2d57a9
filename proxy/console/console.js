// pgcloak security console: polls /api/console and draws it.
//
// Every string in the JSON (user names, application_name, client addresses,
// rules, messages, relation names) can be chosen by whoever connects to the
// database, so it is only ever placed with textContent or setAttribute on
// harmless attributes (title, aria-label, data-*, points). This file never
// builds HTML from strings.
(function () {
  'use strict';

  var POLL_MS = 2000;
  var TIMEOUT_MS = 5000;
  var DASH = '\u2014';
  var MAX_TEXT = 2000; // longer values are cut (the cell already truncates)

  var lastModels = {}; // per table: what was drawn last, to keep selections
  var everLoaded = false;

  function byId(id) {
    return document.getElementById(id);
  }

  // ---- text --------------------------------------------------------------

  // Control, invisible and bidirectional-override characters could hide or
  // reorder what staff read (a user name that displays as someone else's):
  // show them as visible \uXXXX escapes instead.
  var UNSAFE_CHARS =
    /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\ufff9-\ufffb]/g;

  function clean(s) {
    if (s.length > MAX_TEXT) s = s.slice(0, MAX_TEXT) + '\u2026';
    return s.replace(UNSAFE_CHARS, function (c) {
      return '\\u' + ('000' + c.charCodeAt(0).toString(16).toUpperCase()).slice(-4);
    });
  }

  // Any JSON value as display text; missing or empty shows a dash.
  function str(v) {
    if (v === null || v === undefined || v === '') return DASH;
    if (Array.isArray(v)) {
      var parts = v.filter(function (x) {
        return x !== null && x !== undefined && x !== '';
      });
      return parts.length ? clean(parts.map(String).join(', ')) : DASH;
    }
    if (typeof v === 'object') return clean(JSON.stringify(v));
    return clean(String(v));
  }

  function isNum(v) {
    return typeof v === 'number' && isFinite(v);
  }

  var intFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var numFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  var rateFormat = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });

  function fmtInt(v) {
    return isNum(v) ? intFormat.format(v) : DASH;
  }
  function fmtNum(v) {
    return isNum(v) ? numFormat.format(v) : DASH;
  }
  // One decimal; a rate too small to show as 0.1 is still not zero.
  function fmtRate(v) {
    if (!isNum(v)) return DASH;
    if (v > 0 && v < 0.05) return '< ' + rateFormat.format(0.1);
    return rateFormat.format(v);
  }

  // ---- time --------------------------------------------------------------

  function parseTime(v) {
    if (typeof v !== 'string' || v === '') return null;
    var t = Date.parse(v);
    return isNaN(t) ? null : new Date(t);
  }

  function pad2(n) {
    return (n < 10 ? '0' : '') + n;
  }

  // Local wall-clock time, HH:MM:SS.
  function hms(d) {
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  function fullTime(d) {
    return d.toLocaleString() + ' (' + d.toISOString().replace(/\.\d{3}Z$/, 'Z') + ')';
  }

  // "42 s", "5 min", "3 h 12 min", "2 d 4 h".
  function duration(seconds) {
    if (!isNum(seconds)) return DASH;
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' min';
    var h = Math.floor(m / 60);
    if (h < 24) return h + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
    return Math.floor(h / 24) + ' d' + (h % 24 ? ' ' + (h % 24) + ' h' : '');
  }

  function timeCell(v) {
    var d = parseTime(v);
    if (!d) return { t: DASH };
    return { t: hms(d), title: fullTime(d), td: 'time' };
  }

  // ---- tables ------------------------------------------------------------

  // A cell is { t: text, title?: tooltip, td?: td class, span?: class of an
  // inner span holding the text (badges, truncation) }.
  function truncCell(text, wide) {
    return { t: text, title: text === DASH ? '' : text, span: wide ? 'trunc wide' : 'trunc' };
  }

  function makeRow(cells) {
    var tr = document.createElement('tr');
    cells.forEach(function (c) {
      var td = document.createElement('td');
      if (c.td) td.className = c.td;
      var holder = td;
      if (c.span) {
        holder = document.createElement('span');
        holder.className = c.span;
        td.appendChild(holder);
      }
      holder.textContent = c.t;
      if (c.title) holder.setAttribute('title', c.title);
      tr.appendChild(td);
    });
    return tr;
  }

  function renderTable(key, rows) {
    var body = byId(key + '-body');
    var model = JSON.stringify(rows);
    // Redraw only on change, so a selection or hover survives the poll.
    if (lastModels[key] !== model) {
      lastModels[key] = model;
      var frag = document.createDocumentFragment();
      rows.forEach(function (r) {
        frag.appendChild(makeRow(r));
      });
      while (body.firstChild) body.removeChild(body.firstChild);
      body.appendChild(frag);
    }
    body.setAttribute('data-count', String(rows.length));
    byId(key + '-wrap').hidden = rows.length === 0;
    var empty = byId(key + '-empty');
    empty.textContent = empty.getAttribute('data-empty');
    empty.hidden = rows.length !== 0;
    var count = byId(key + '-count');
    if (count) count.textContent = rows.length ? '(' + rows.length + ')' : '';
  }

  function list(v) {
    return Array.isArray(v) ? v.filter(function (x) { return x && typeof x === 'object'; }) : [];
  }

  // Newest first; entries without a readable time keep their place at the end.
  function newestFirst(items) {
    return items
      .map(function (x, i) {
        var d = parseTime(x.time);
        return { x: x, i: i, t: d ? d.getTime() : -Infinity };
      })
      .sort(function (a, b) {
        return b.t - a.t || a.i - b.i;
      })
      .map(function (e) {
        return e.x;
      });
  }

  function sessionRows(sessions, nowMs) {
    return sessions.map(function (s) {
      var tls;
      if (s.tls === true) {
        tls = { t: s.tls_version ? str(s.tls_version) : 'TLS' };
      } else {
        tls = { t: 'plain', span: 'badge warn', title: 'Not encrypted: passwords and data cross the network in clear text' };
      }
      var state;
      if (s.state === 'active') state = { t: 'active', span: 'badge active' };
      else if (s.state === 'idle') state = { t: 'idle', span: 'badge idle' };
      else state = { t: str(s.state) };
      var since = parseTime(s.connected_at);
      var connected = since
        ? { t: duration((nowMs - since.getTime()) / 1000), title: 'Since ' + fullTime(since), td: 'nowrap' }
        : { t: DASH };
      return [
        { t: fmtInt(s.id), td: 'num' },
        truncCell(str(s.user)),
        truncCell(str(s.database)),
        { t: str(s.client), title: str(s.client), span: 'trunc mono' },
        Object.assign(truncCell(str(s.application_name)), { span: 'trunc app' }),
        tls,
        truncCell(str(s.policy)),
        state,
        { t: str(s.current_class), td: 'mono' },
        { t: fmtInt(s.current_rows), td: 'num' },
        { t: fmtInt(s.rows), td: 'num' },
        { t: fmtInt(s.protected_rows), td: 'num' + (isNum(s.protected_rows) && s.protected_rows > 0 ? ' emph' : '') },
        connected,
      ];
    });
  }

  function readerRows(readers) {
    return readers.map(function (r) {
      return [
        truncCell(str(r.user)),
        { t: fmtInt(r.protected_rows), td: 'num emph' },
        { t: fmtInt(r.statements), td: 'num' },
        truncCell(str(r.relations), true),
      ];
    });
  }

  function denialRows(denials) {
    return newestFirst(denials).map(function (d) {
      return [
        timeCell(d.time),
        truncCell(str(d.user)),
        { t: str(d.client), title: str(d.client), span: 'trunc mono' },
        { t: str(d.rule), title: str(d.rule), span: 'trunc mono' },
        truncCell(str(d.message), true),
      ];
    });
  }

  function actionCell(a) {
    var t = str(a);
    if (t === DASH) return { t: t };
    var cls = /^(block|deny|denied|terminate|terminated|kill|disconnect)/i.test(t) ? 'badge bad' : 'badge warn';
    return { t: t, span: cls };
  }

  function alertRows(alerts) {
    return newestFirst(alerts).map(function (a) {
      var detector = str(a.detector);
      var detectorTitle = detector === DASH ? '' : detector + (a.rule ? ' (rule ' + str(a.rule) + ')' : '');
      var relation = str(a.relation);
      var relationTitle = relation === DASH ? '' : relation + (a.category ? ' (category ' + str(a.category) + ')' : '');
      return [
        timeCell(a.time),
        { t: detector, title: detectorTitle, span: 'trunc' },
        truncCell(str(a.user)),
        { t: str(a.client), title: str(a.client), span: 'trunc mono' },
        { t: relation, title: relationTitle, span: 'trunc' },
        { t: fmtNum(a.observed), td: 'num emph' },
        { t: fmtNum(a.baseline), td: 'num' },
        actionCell(a.action),
      ];
    });
  }

  // ---- rates and sparklines ----------------------------------------------

  var RATES = [
    { key: 'masked', rate: 'masked_values_per_second', history: 'masked_values', what: 'masked values' },
    { key: 'denials', rate: 'denials_per_second', history: 'denials', what: 'denials' },
    { key: 'statements', rate: 'statements_per_second', history: 'statements', what: 'statements' },
    { key: 'protected', rate: 'protected_rows_per_second', history: 'protected_rows', what: 'protected rows' },
  ];

  var SPARK_W = 240;
  var SPARK_H = 48;
  var SPARK_PAD = 3;

  function drawSpark(key, values, bucketSeconds, what) {
    var svg = byId('spark-' + key);
    var line = svg.querySelector('.spark-line');
    var area = svg.querySelector('.spark-area');
    var note = byId('spark-' + key + '-note');
    var vs = Array.isArray(values)
      ? values.map(function (v) {
          return isNum(v) && v > 0 ? v : 0;
        })
      : [];
    if (vs.length < 2) {
      line.setAttribute('points', '');
      area.setAttribute('points', '');
      svg.setAttribute('aria-label', 'No history');
      note.textContent = 'No history yet';
      return;
    }
    var max = Math.max.apply(null, vs);
    var total = vs.reduce(function (a, b) {
      return a + b;
    }, 0);
    var scale = max > 0 ? (SPARK_H - 2 * SPARK_PAD) / max : 0;
    var step = SPARK_W / (vs.length - 1);
    var pts = vs.map(function (v, i) {
      return (i * step).toFixed(1) + ',' + (SPARK_H - SPARK_PAD - v * scale).toFixed(1);
    });
    line.setAttribute('points', pts.join(' '));
    area.setAttribute('points', pts.join(' ') + ' ' + SPARK_W + ',' + SPARK_H + ' 0,' + SPARK_H);
    var bucket = isNum(bucketSeconds) && bucketSeconds > 0 ? bucketSeconds : 60;
    var per = bucket === 60 ? 'min' : bucket + ' s';
    var span = duration(bucket * vs.length);
    var text = 'Last ' + span + ': ' + fmtInt(total) + ' ' + what + ', peak ' + fmtInt(max) + ' per ' + per;
    svg.setAttribute('aria-label', text);
    note.textContent = 'Last ' + span + ' \u00b7 peak ' + fmtInt(max) + '/' + per;
    note.setAttribute('title', text);
  }

  function renderRates(rates, history) {
    rates = rates && typeof rates === 'object' ? rates : {};
    history = history && typeof history === 'object' ? history : {};
    RATES.forEach(function (r) {
      var v = rates[r.rate];
      byId('rate-' + r.key + '-value').textContent = fmtRate(v);
      byId('rate-' + r.key).classList.toggle('hot', r.key === 'denials' && isNum(v) && v > 0);
      drawSpark(r.key, history[r.history], history.bucket_seconds, r.what);
    });
  }

  // ---- header and status -------------------------------------------------

  function renderHeader(data, nowDate) {
    byId('version').textContent = str(data.version);
    var ready = byId('ready');
    if (data.ready === true) {
      ready.textContent = 'Ready';
      ready.className = 'badge ok';
      ready.removeAttribute('title');
    } else {
      var reason = data.not_ready_reason ? str(data.not_ready_reason) : '';
      ready.textContent = reason ? 'Not ready: ' + reason : 'Not ready';
      ready.className = 'badge bad trunc';
      ready.setAttribute('title', ready.textContent);
    }
    byId('uptime').textContent = isNum(data.uptime_seconds) ? duration(data.uptime_seconds) : DASH;
    var last = byId('last-update');
    last.textContent = hms(nowDate);
    last.setAttribute('title', 'Data as of ' + fullTime(nowDate));
  }

  function render(data) {
    var serverNow = parseTime(data.now);
    var nowDate = serverNow || new Date();
    renderHeader(data, nowDate);
    renderRates(data.rates, data.history);
    renderTable('sessions', sessionRows(list(data.sessions), nowDate.getTime()));
    renderTable('top-readers', readerRows(list(data.top_readers)));
    renderTable('denials', denialRows(list(data.recent_denials)));
    renderTable('alerts', alertRows(list(data.recent_alerts)));
  }

  function showProblem(message) {
    var banner = byId('banner');
    banner.textContent = message;
    banner.hidden = false;
    if (everLoaded) {
      document.body.setAttribute('data-stale', '1');
      document.body.classList.add('stale');
      byId('stale-tag').hidden = false;
    }
  }

  function clearProblem() {
    byId('banner').hidden = true;
    document.body.removeAttribute('data-stale');
    document.body.classList.remove('stale');
    byId('stale-tag').hidden = true;
  }

  // ---- polling -----------------------------------------------------------

  function Problem(message) {
    this.message = message;
  }

  function unreachable(what) {
    return new Problem('Cannot reach pgcloak: ' + what + '; retrying');
  }

  function poll() {
    var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctrl
      ? setTimeout(function () {
          ctrl.abort();
        }, TIMEOUT_MS)
      : null;
    var init = { credentials: 'same-origin', cache: 'no-store' };
    if (ctrl) init.signal = ctrl.signal;
    fetch('/api/console', init)
      .then(
        function (res) {
          if (res.status === 401) throw new Problem('This console needs the metrics token (metrics.token_file)');
          if (res.status !== 200) {
            throw unreachable('HTTP ' + res.status + (res.statusText ? ' ' + clean(res.statusText) : ''));
          }
          return res.json().then(null, function () {
            throw unreachable('unreadable response');
          });
        },
        function () {
          throw unreachable(ctrl && ctrl.signal.aborted ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s' : 'network error');
        }
      )
      .then(function (data) {
        if (!data || typeof data !== 'object' || Array.isArray(data)) throw unreachable('unexpected response');
        render(data);
        clearProblem();
        if (!everLoaded) {
          everLoaded = true;
          document.body.setAttribute('data-loaded', '1');
        }
      })
      .catch(function (err) {
        showProblem(err instanceof Problem ? err.message : 'Cannot show the data: ' + clean(String(err)) + '; retrying');
      })
      .then(function () {
        if (timer !== null) clearTimeout(timer);
        setTimeout(poll, POLL_MS);
      });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', poll);
  else poll();
})();

// hippo-gitops dashboard: live updates and the "Reconcile now" form. Served as is (no build
// step). The page is complete without it; this only keeps it current. Text is only ever set
// with textContent, never parsed as HTML.
(function () {
  'use strict';
  var body = document.body;
  var page = body.dataset.page;
  var app = body.dataset.app || '';
  var since = body.dataset.since || '';
  var POLL_MS = 2000;
  var REFRESH_MS = 10000;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }

  function getJSON(url) {
    return fetch(url, { headers: { Accept: 'application/json' }, credentials: 'same-origin' })
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); });
  }

  function ago(iso) {
    var s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) { return s + 's ago'; }
    if (s < 3600) { return Math.floor(s / 60) + 'm ago'; }
    if (s < 86400) { return Math.floor(s / 3600) + 'h ago'; }
    return Math.floor(s / 86400) + 'd ago';
  }

  function timeEl(iso) {
    var t = el('time', ago(iso));
    t.setAttribute('datetime', iso);
    t.title = iso;
    return t;
  }

  function badge(condition) {
    return el('b', condition.type, 'c ' + condition.type);
  }

  function nomadText(n) {
    if (n.state === 'job') { return n.healthy + '/' + n.total; }
    return n.state === 'missing' ? 'no job' : '?';
  }

  function eventRow(e) {
    var tr = el('tr', null, 'ev ' + e.type + ' new');
    var revision = (e.revisionBefore || e.revisionAfter)
      ? (e.revisionBefore || '-') + ' → ' + (e.revisionAfter || '-') : '';
    var cells = [timeEl(e.time), e.type, e.channel || '', e.reason, e.message, revision];
    cells.forEach(function (c) {
      var td = el('td');
      if (typeof c === 'string') { td.textContent = c; } else { td.appendChild(c); }
      tr.appendChild(td);
    });
    var commit = el('td');
    commit.appendChild(el('code', e.commit ? e.commit.slice(0, 12) : ''));
    tr.appendChild(commit);
    return tr;
  }

  function refreshApp() {
    return getJSON('/api/v1/apps/' + encodeURIComponent(app)).then(function (a) {
      var cond = document.getElementById('condition');
      cond.replaceChildren(badge(a.condition));
      var reason = document.getElementById('reason');
      reason.replaceChildren(el('b', a.condition.reason), document.createTextNode(': ' + a.condition.message));
      var tbody = document.querySelector('#channels tbody');
      tbody.replaceChildren.apply(tbody, a.channels.map(function (c) {
        var tr = el('tr');
        var job = c.nomad.state === 'job' ? 'v' + c.nomad.version + ' ' + c.nomad.status : c.nomad.state;
        var allocs = c.nomad.state === 'job' ? c.nomad.healthy + '/' + c.nomad.total : (c.nomad.state === 'missing' ? '0/0' : '?');
        [c.channel, c.desiredRevision || '-', c.activeRevision || '-', job, allocs].forEach(function (t) {
          tr.appendChild(el('td', t));
        });
        var td = el('td');
        td.append(badge(c.condition), ' ', el('small', c.condition.reason), el('div', c.condition.message, 'msg'));
        tr.appendChild(td);
        return tr;
      }));
    });
  }

  function refreshOverview() {
    return getJSON('/api/v1/apps').then(function (o) {
      document.getElementById('role').textContent = o.role;
      o.apps.forEach(function (a) {
        var row = document.querySelector('tr[data-app="' + CSS.escape(a.app) + '"]');
        if (!row) { return; }
        var cond = row.querySelector('.cond');
        var parts = [badge(a.condition), ' ', el('small', a.condition.reason)];
        if (a.condition.type !== 'Ready') { parts.push(el('div', a.condition.message, 'msg')); }
        cond.replaceChildren.apply(cond, parts);
        var ch = row.querySelector('.ch');
        var nodes = [];
        a.channels.forEach(function (c, i) {
          if (i > 0) { nodes.push(el('br')); }
          var healthy = c.nomad.state === 'unknown' || (c.nomad.state === 'job' && c.nomad.healthy === c.nomad.total);
          nodes.push(c.channel + ' ' + (c.activeRevision || '-') + ' ',
            healthy ? nomadText(c.nomad) : el('em', nomadText(c.nomad)));
        });
        ch.replaceChildren.apply(ch, nodes);
        var last = row.lastElementChild;
        if (a.lastChange) { last.replaceChildren(timeEl(a.lastChange.at)); }
      });
    });
  }

  function onEvents(events) {
    if (page === 'app') {
      var tbody = document.querySelector('#events tbody');
      events.forEach(function (e) { tbody.insertBefore(eventRow(e), tbody.firstChild); });
      return refreshApp();
    }
    return refreshOverview();
  }

  var lastRefresh = Date.now();
  function poll() {
    var url = '/api/v1/events?limit=200';
    if (since) { url += '&since=' + encodeURIComponent(since); }
    if (app) { url += '&app=' + encodeURIComponent(app); }
    getJSON(url).then(function (r) {
      var events = r.events;
      if (events.length) {
        since = events[events.length - 1].time;
        lastRefresh = Date.now();
        return onEvents(events);
      }
      if (Date.now() - lastRefresh > REFRESH_MS) {
        lastRefresh = Date.now();
        return page === 'app' ? refreshApp() : refreshOverview();
      }
    }).catch(function () { /* the controller is restarting: try again */ })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  function reconcileForm() {
    var form = document.getElementById('reconcile');
    if (!form) { return; }
    form.hidden = false;
    var token = document.getElementById('token');
    var result = document.getElementById('reconcile-result');
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var value = token.value;
      // Sent once, never kept: not in the page, not in storage.
      token.value = '';
      result.textContent = 'sending…';
      fetch('/api/v1/apps/' + encodeURIComponent(form.dataset.app) + '/reconcile', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + value },
        credentials: 'same-origin'
      }).then(function (r) {
        result.textContent = r.status === 202 ? 'Reconcile requested'
          : r.status === 401 ? 'Wrong token' : 'Refused (HTTP ' + r.status + ')';
      }).catch(function () { result.textContent = 'The controller did not answer'; });
    });
  }

  if (page === 'app' || page === 'overview') {
    reconcileForm();
    setTimeout(poll, POLL_MS);
  }
}());

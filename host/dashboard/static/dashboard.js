// The flynn-host dashboard: the cluster as the leader sees it, kept live by the same long-poll
// API every client uses (GET /cluster/events?since=CURSOR&wait=S), through the agent that served
// this page (any agent forwards cluster routes to the leader).
//
// - Everything from the API is written with textContent (never as markup): a job's command is
//   whatever its author typed. The page's Content-Security-Policy also refuses markup strings.
// - The DOM is changed where an event says, one row or card at a time: with 1,000 jobs a
//   re-render per event would cost a frame or more each (bench/dashboard.py measures both).
// - The page talks to its own origin only, sending the token (kept in sessionStorage) when the
//   person has given one; a 401 shows the token form and the request is sent again.
'use strict';
(() => {
  const TOKEN_KEY = 'flynn-host-token';
  const WAIT_S = 25;                  // long-poll wait; the agent allows up to 60
  const RETRY_MIN_MS = 200;           // first retry after an error ...
  const RETRY_MAX_MS = 1000;          // ... and at most this: a change shows within a second
  const EVENTS_SHOWN = 200;           // the event list keeps the newest this many
  const LOG_TAIL = 1000;              // lines of a log shown before it is followed
  const LOG_MAX_CHARS = 1 << 20;      // a followed log is trimmed past this many characters
  const STATES = new Set(['starting', 'running', 'done', 'crashed', 'failed', 'stopped', 'lost']);
  const ACTIVE = new Set(['starting', 'running']);
  // ?measure: record how long each render and update takes, style and layout included
  // (performance.measure entries, read by bench/dashboard.py)
  const measuring = new URLSearchParams(location.search).has('measure');

  const $ = (id) => document.getElementById(id);
  const ui = {
    connection: $('connection'), leader: $('leader-id'), totals: $('totals'),
    forget: $('forget-token'), tokenForm: $('token-form'), tokenInput: $('token-input'),
    tokenProblem: $('token-problem'), hosts: $('hosts'), hostCount: $('host-count'),
    rows: $('job-rows'), jobCount: $('job-count'), filter: $('job-filter'),
    logSection: $('log-section'), logJob: $('log-job'), logState: $('log-state'),
    logStop: $('log-stop'), logClose: $('log-close'), logError: $('log-error'), log: $('log'),
    events: $('events'), cursor: $('event-cursor'),
  };

  const hosts = new Map();   // host id -> {record, card parts, jobIds}
  const jobs = new Map();    // job id -> {summary, hostId, row, cells, shown, created}
  let leaderId = null;
  let cursor = null;
  let eventsApplied = 0;     // job changes shown from events, counted: see reconcile()
  let filterText = '';

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function measured(name, work) {
    if (!measuring) return work();
    const start = performance.now();
    const result = work();
    document.body.getBoundingClientRect();  // style and layout now, inside the measure
    performance.measure(name, {start, end: performance.now()});
    return result;
  }

  // ---- the API, with the token -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY) || '';
  const authHeaders = () => (storedToken() ? {Authorization: 'Bearer ' + storedToken()} : {});
  let tokenAsked = null;     // {promise, resolve} while the form waits for a token

  function askForToken() {
    const problem = storedToken() ? 'The agent refused that token.' : '';
    if (!tokenAsked) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      tokenAsked = {promise, resolve};
      ui.tokenForm.hidden = false;
      ui.tokenInput.focus();
      setConnection('token', 'token needed');
    }
    ui.tokenProblem.textContent = problem;
    return tokenAsked.promise;
  }

  ui.tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!/^[\x21-\x7e]+$/.test(token)) {  // what an agent's token file may hold
      ui.tokenProblem.textContent = 'A token is one word of printable ASCII.';
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    ui.tokenInput.value = '';
    ui.tokenForm.hidden = true;
    ui.forget.hidden = false;
    const asked = tokenAsked;
    tokenAsked = null;
    if (asked) asked.resolve();
  });
  ui.forget.hidden = !storedToken();
  ui.forget.addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    ui.forget.hidden = true;
  });

  /** The JSON answer of `path`; an ApiError for anything else (status 0: no answer). */
  async function api(path, {method = 'GET', timeoutMs = 15000} = {}) {
    for (;;) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), timeoutMs);
      try {
        const resp = await fetch(path, {method, headers: authHeaders(), cache: 'no-store',
                                        signal: controller.signal});
        if (resp.status === 401) {
          clearTimeout(timer);
          await askForToken();
          continue;
        }
        const body = await resp.json().catch(() => null);
        if (!resp.ok) {
          throw new ApiError(resp.status, body && body.code,
                             (body && body.message) || `${resp.status} ${resp.statusText}`);
        }
        return body;
      } catch (error) {
        if (error instanceof ApiError) throw error;
        throw new ApiError(0, 'unreachable', controller.signal.aborted
          ? 'the agent did not answer in time' : 'the agent cannot be reached');
      } finally {
        clearTimeout(timer);
      }
    }
  }

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text || state;
  }

  // ---- hosts ---------------------------------------------------------------------------------

  function meter(kind, label) {
    const root = el('div', 'meter ' + kind);
    const bar = el('div', 'bar');
    const fill = el('div', 'fill');
    const text = el('span', 'meter-text');
    bar.append(fill);
    root.append(el('span', '', label), bar, text);
    return {root, fill, text};
  }

  const number = (n) => Number(n || 0).toLocaleString('en-US');

  function setMeter(m, used, total, unit) {
    used = Number(used) || 0;
    total = Number(total) || 0;
    m.fill.style.width = (total > 0 ? Math.min(100, (used / total) * 100) : 0).toFixed(1) + '%';
    m.fill.classList.toggle('full', total > 0 && used >= total);
    m.text.textContent = `${number(used)} / ${total > 0 ? number(total) : '?'} ${unit}`;
  }

  function newHost(id) {
    const card = el('div', 'host');
    card.dataset.hostId = id;
    const head = el('div', 'host-head');
    const badge = el('span', 'badge', 'leader');
    badge.hidden = true;
    head.append(el('span', 'host-id', id), badge);
    const addr = el('div', 'host-addr');
    const mem = meter('mem', 'mem');
    const cpu = meter('cpu', 'cpu');
    const counts = el('div', 'host-jobs');
    card.append(head, addr, mem.root, cpu.root, counts);
    ui.hosts.append(card);  // the API lists the oldest first; a host that joins is the newest
    const host = {card, badge, addr, mem, cpu, counts, jobIds: new Set(), record: null};
    hosts.set(id, host);
    return host;
  }

  function showHost(record) {
    const host = hosts.get(record.id) || newHost(record.id);
    host.record = record;
    host.addr.textContent = record.addr || '';
    host.addr.title = record.version ? 'flynn-host ' + record.version : '';
    const res = record.resources || {}, used = record.allocated || {};
    setMeter(host.mem, used.memory_mb, res.memory_mb, 'MB');
    setMeter(host.cpu, used.cpu_shares, res.cpu_shares, 'shares');
    dirtyHosts.add(host);  // its job counts, shown once the jobs are in (flushHosts)
    if (record.leader) setLeader(record.id);
    const leading = record.id === leaderId;  // the leader may have been named before its card
    if (host.badge.hidden === leading) {
      host.badge.hidden = !leading;
      host.card.classList.toggle('leader', leading);
    }
    return host;
  }

  function setLeader(id) {
    if (id === leaderId) return;
    const before = hosts.get(leaderId);
    if (before) { before.badge.hidden = true; before.card.classList.remove('leader'); }
    leaderId = id;
    ui.leader.textContent = id || 'none';
    const now = hosts.get(id);
    if (now) { now.badge.hidden = false; now.card.classList.add('leader'); }
  }

  function dropHost(id, {jobsToo}) {
    const host = hosts.get(id);
    if (!host) return;
    host.card.remove();
    hosts.delete(id);
    for (const jobId of [...host.jobIds]) {
      // its active jobs stay, to be reported lost by the events that follow the removal
      if (jobsToo || !ACTIVE.has(jobs.get(jobId).summary.status)) dropJob(jobId);
    }
    const pending = hostReads.get(id);
    if (pending) { pending.cancelled = true; hostReads.delete(id); }  // a re-join reads anew
  }

  function showHostCounts(host) {
    let active = 0, ended = 0;
    for (const jobId of host.jobIds) {
      if (ACTIVE.has(jobs.get(jobId).summary.status)) active++; else ended++;
    }
    host.counts.textContent = `${active} active, ${ended} ended`;
  }

  // one read of a host at a time; changes meanwhile ask for one more read after it
  const hostReads = new Map();
  function readHost(id) {
    const pending = hostReads.get(id);
    if (pending) { pending.again = true; return; }
    const read = {again: true, cancelled: false};
    hostReads.set(id, read);
    (async () => {
      try {
        while (read.again && !read.cancelled) {
          read.again = false;
          const asked = eventsApplied;
          const record = await api('/cluster/hosts/' + encodeURIComponent(id));
          if (!read.cancelled) {
            measured('dashboard:host-read', () => reconcile([record], id, asked));
          }
        }
      } catch (error) {
        if (error.status === 404 && !read.cancelled) dropHost(id, {jobsToo: true});
        // otherwise the next event, or a re-list, brings it up to date
      } finally {
        if (hostReads.get(id) === read) hostReads.delete(id);
        refreshTotals();
      }
    })();
  }

  let leaderRead = null;
  /** Ask this agent who leads; again shortly while it names a host that has left (the agent's
   *  own view may be a moment behind the leader's events). */
  function readLeader() {
    if (leaderRead) return;
    leaderRead = (async () => {
      try {
        for (let tries = 0; tries < 20; tries++) {
          try {
            const leader = await api('/cluster/leader');
            if (hosts.has(leader.id) || tries === 19) { setLeader(leader.id); return; }
          } catch (error) {
            if (error.status === 503) setLeader(null);
          }
          await sleep(250);
        }
      } finally {
        leaderRead = null;
      }
    })();
  }

  // ---- jobs ----------------------------------------------------------------------------------

  const CELLS = ['state', 'image', 'command', 'ports', 'host', 'age'];

  function newJob(id) {
    const row = el('div', 'job');
    row.setAttribute('role', 'row');
    row.dataset.jobId = id;
    const idCell = el('span', 'c-id');
    const link = el('button', 'job-link', id);
    link.type = 'button';
    link.title = 'follow the log of ' + id;
    idCell.append(link);
    row.append(idCell);
    const cells = {};
    for (const name of CELLS) row.append(cells[name] = el('span', 'c-' + name));
    for (const cell of row.children) cell.setAttribute('role', 'cell');
    cells.state.classList.add('state');
    const job = {id, row, cells, shown: {}, summary: null, hostId: null, created: NaN};
    jobs.set(id, job);
    return job;
  }

  // what each cell shows, kept beside the DOM: comparing with it costs no DOM read
  function show(job, cell, text) {
    if (job.shown[cell] !== text) {
      job.shown[cell] = text;
      job.cells[cell].textContent = text;
    }
  }

  function stateText(summary) {
    const exit = summary.exit_status;
    return exit !== null && exit !== undefined && exit !== 0 && !ACTIVE.has(summary.status)
      ? `${summary.status} (${exit})` : String(summary.status);
  }

  function portsText(ports) {
    return (ports || []).map((p) => (p.container_port && p.container_port !== p.port
      ? `${p.port}→${p.container_port}/${p.proto}` : `${p.port}/${p.proto}`)).join(', ');
  }

  function ageText(created) {
    if (Number.isNaN(created)) return '';
    const s = Math.max(0, Math.floor((Date.now() - created) / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm';
    if (s < 86400) return Math.floor(s / 3600) + 'h';
    return Math.floor(s / 86400) + 'd';
  }

  const RANK = new Map([['starting', 0], ['running', 1]]);
  const rank = (status) => (RANK.has(status) ? RANK.get(status) : 2);

  /** Show `summary` (on `hostId`) in its row. A listing can be older than an event already
   *  applied (they come by different requests): a listing never moves a job back to an
   *  earlier state; events, which come in order, always apply. */
  function showJob(job, summary, hostId, fromListing) {
    const before = job.summary;
    if (fromListing && before && before.created_at === summary.created_at &&
        before.status !== 'lost' && rank(summary.status) < rank(before.status)) return;
    if (!fromListing) job.changedAt = ++eventsApplied;
    if (job.hostId !== hostId) {
      const old = hosts.get(job.hostId);
      if (old) { old.jobIds.delete(job.id); dirtyHosts.add(old); }
      job.hostId = hostId;
    }
    const host = hosts.get(hostId);
    if (host) { host.jobIds.add(job.id); dirtyHosts.add(host); }
    job.summary = summary;
    job.created = Date.parse(summary.created_at);
    const state = STATES.has(summary.status) ? summary.status : 'unknown';
    if (job.shown.stateName !== state) job.cells.state.dataset.state = job.shown.stateName = state;
    show(job, 'state', stateText(summary));
    const error = String(summary.error || '');
    if (job.shown.error !== error) job.cells.state.title = job.shown.error = error;
    show(job, 'image', String(summary.image || ''));
    const command = String(summary.command || '');
    if (job.shown.command !== command) {
      show(job, 'command', command);
      job.cells.command.title = command;  // the whole line, when the cell cuts it
    }
    show(job, 'ports', portsText(summary.ports));
    show(job, 'host', String(hostId));
    show(job, 'age', ageText(job.created));
    applyFilter(job);
    if (logFollow && logFollow.id === job.id) showLogState();
  }

  function dropJob(id) {
    const job = jobs.get(id);
    if (!job) return;
    job.row.remove();
    jobs.delete(id);
    const host = hosts.get(job.hostId);
    if (host) { host.jobIds.delete(id); dirtyHosts.add(host); }
  }

  /** Rows for jobs not shown yet, newest first, above the others: one insertion for all. */
  function insertJobs(fresh, fromListing) {
    fresh.sort((a, b) => (Date.parse(b[0].created_at) || 0) - (Date.parse(a[0].created_at) || 0));
    const rows = document.createDocumentFragment();
    for (const [summary, hostId] of fresh) {
      const job = newJob(summary.id);
      showJob(job, summary, hostId, fromListing);
      rows.append(job.row);
    }
    ui.rows.prepend(rows);
  }

  /** Bring the page in line with host records from the API: every host when `onlyHost` is
   *  null (a listing), else that one host, read when `asked` events had been applied: a job an
   *  event showed since is newer than the record, and stays. */
  function reconcile(records, onlyHost, asked = Infinity) {
    const seenHosts = new Set(), seenJobs = new Set(), fresh = [];
    for (const record of records) {
      seenHosts.add(record.id);
      showHost(record);
      for (const summary of record.jobs || []) {
        const job = jobs.get(summary.id);
        if (job && job.hostId !== record.id && job.summary && ACTIVE.has(job.summary.status) &&
            !ACTIVE.has(summary.status)) continue;  // an id that ran on two hosts: the live one
        seenJobs.add(summary.id);
        if (job) showJob(job, summary, record.id, true);
        else fresh.push([summary, record.id]);
      }
    }
    if (onlyHost === null) {
      for (const id of [...hosts.keys()]) if (!seenHosts.has(id)) dropHost(id, {jobsToo: true});
    }
    for (const job of [...jobs.values()]) {
      if (!seenJobs.has(job.id) && (onlyHost === null || job.hostId === onlyHost) &&
          !(job.changedAt > asked)) {
        dropJob(job.id);
      }
    }
    insertJobs(fresh, true);
    flushHosts();
  }

  const dirtyHosts = new Set();
  function flushHosts() {
    for (const host of dirtyHosts) if (hosts.get(host.record && host.record.id) === host) {
      showHostCounts(host);
    }
    dirtyHosts.clear();
    refreshTotals();
  }

  function refreshTotals() {
    let active = 0;
    for (const job of jobs.values()) if (ACTIVE.has(job.summary.status)) active++;
    ui.hostCount.textContent = String(hosts.size);
    ui.jobCount.textContent = `${jobs.size} (${active} active)`;
    ui.totals.textContent = `${hosts.size} hosts, ${jobs.size} jobs, ${active} active`;
  }

  function applyFilter(job) {
    const hidden = filterText !== '' && ![job.id, job.summary.status, job.summary.image,
      job.summary.command, job.hostId].some((text) => String(text || '').toLowerCase()
      .includes(filterText));
    if (job.shown.hidden !== hidden) job.row.hidden = job.shown.hidden = hidden;
  }

  ui.filter.addEventListener('input', () => {
    filterText = ui.filter.value.trim().toLowerCase();
    for (const job of jobs.values()) applyFilter(job);
  });

  setInterval(() => { for (const job of jobs.values()) show(job, 'age', ageText(job.created)); },
              1000);

  // ---- events --------------------------------------------------------------------------------

  function clock(time) {
    const date = new Date(time);
    return Number.isNaN(date.getTime()) ? String(time || '') : date.toLocaleTimeString('en-GB');
  }

  function applyEvents(events) {
    const fresh = new Map();   // job id -> [summary, host id], for rows made in one go
    let hostsChanged = false;
    for (const event of events) {
      if (event.type === 'job' && event.job && event.job.id) {
        const job = jobs.get(event.job.id);
        if (job) showJob(job, event.job, event.host_id, false);
        else fresh.set(event.job.id, [event.job, event.host_id]);
      } else if (event.type === 'host') {
        hostsChanged = true;
        if (event.event === 'remove') dropHost(event.host_id, {jobsToo: false});
        else readHost(event.host_id);
      }
    }
    insertJobs([...fresh.values()], false);
    flushHosts();
    if (hostsChanged) readLeader();
    listEvents(events.slice(-EVENTS_SHOWN));
  }

  function listEvents(events) {
    if (!events.length) return;
    const items = document.createDocumentFragment();
    for (let i = events.length - 1; i >= 0; i--) {
      const event = events[i];
      const item = el('li');
      item.append(el('span', 'ev-time', clock(event.time)),
                  el('span', 'ev-what', `${event.type} ${event.event}`));
      if (event.type === 'job' && event.job) {
        const state = el('span', 'state', String(event.job.status));
        state.dataset.state = STATES.has(event.job.status) ? event.job.status : 'unknown';
        item.append(el('span', 'ev-job', String(event.job_id)), state,
                    el('span', 'ev-host', 'on ' + event.host_id));
      } else {
        item.append(el('span', 'ev-host', String(event.host_id)));
      }
      items.append(item);
    }
    ui.events.prepend(items);
    while (ui.events.childElementCount > EVENTS_SHOWN) ui.events.lastElementChild.remove();
  }

  async function relist() {
    // the cursor first: what changes while the hosts are read comes as events after it
    const now = await api('/cluster/events');
    const records = await api('/cluster/hosts');
    measured('dashboard:render', () => reconcile(records, null));
    cursor = now.cursor;
    ui.cursor.textContent = 'cursor ' + cursor;
  }

  async function retrying(work) {
    for (let delay = RETRY_MIN_MS; ; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      try {
        return await work();
      } catch (error) {
        setConnection('retrying', 'retrying: ' + error.message);
        await sleep(delay);
      }
    }
  }

  async function follow() {
    setConnection('connecting', 'connecting');
    await retrying(relist);
    setConnection('live', 'live');
    let delay = RETRY_MIN_MS, troubled = false;
    for (;;) {
      try {
        const page = await api(`/cluster/events?since=${cursor}&wait=${WAIT_S}`,
                               {timeoutMs: (WAIT_S + 15) * 1000});
        measured('dashboard:update', () => applyEvents(page.events));
        cursor = page.cursor;
        ui.cursor.textContent = 'cursor ' + cursor;
        setConnection('live', 'live');
        if (troubled) readLeader();   // the leader may have changed while we could not ask
        troubled = false;
        delay = RETRY_MIN_MS;
      } catch (error) {
        if (error.code === 'cursor_expired') {
          // older than what the leader keeps (a new leader's view, a long absence): re-list
          await retrying(relist);
          setConnection('live', 'live');
          continue;
        }
        troubled = true;
        setConnection('retrying', 'retrying: ' + error.message);
        await sleep(delay);
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    }
  }

  // ---- a job's log, followed -----------------------------------------------------------------

  let logFollow = null;      // {id, controller}
  let logChars = 0;

  ui.rows.addEventListener('click', (event) => {
    const row = event.target.closest('.job');
    if (row && row.dataset.jobId) openLog(row.dataset.jobId);
  });
  ui.logClose.addEventListener('click', () => closeLog());
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeLog(); });
  ui.logStop.addEventListener('click', async () => {
    if (!logFollow) return;
    ui.logStop.disabled = true;
    try {
      await api('/cluster/jobs/' + encodeURIComponent(logFollow.id), {method: 'DELETE'});
    } catch (error) {
      ui.logError.textContent = 'Stopping failed: ' + error.message;
    } finally {
      ui.logStop.disabled = false;
    }
  });

  function closeLog() {
    if (!logFollow) return;
    logFollow.controller.abort();
    const job = jobs.get(logFollow.id);
    if (job) job.row.classList.remove('selected');
    logFollow = null;
    ui.logSection.hidden = true;
    document.body.classList.remove('log-open');
  }

  function showLogState() {
    const job = logFollow && jobs.get(logFollow.id);
    const status = job ? job.summary.status : 'unknown';
    ui.logState.dataset.state = STATES.has(status) ? status : 'unknown';
    ui.logState.textContent = job ? stateText(job.summary) : '';
    ui.logStop.hidden = !ACTIVE.has(status);
    ui.logState.title = (job && job.summary.error) || '';
  }

  function openLog(id) {
    closeLog();
    logFollow = {id, controller: new AbortController()};
    const job = jobs.get(id);
    if (job) job.row.classList.add('selected');
    ui.logJob.textContent = id;
    ui.logError.textContent = '';
    ui.log.textContent = '';
    logChars = 0;
    ui.logSection.hidden = false;
    document.body.classList.add('log-open');
    showLogState();
    followLog(id, logFollow.controller.signal);
  }

  function appendLog(text, className) {
    if (!text) return;
    const atEnd = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 4;
    if (className) ui.log.append(el('span', className, text));
    else ui.log.append(document.createTextNode(text));
    logChars += text.length;
    if (logChars > LOG_MAX_CHARS) {
      ui.log.textContent = ui.log.textContent.slice(-LOG_MAX_CHARS / 2);
      logChars = ui.log.textContent.length;
    }
    if (atEnd) ui.log.scrollTop = ui.log.scrollHeight;
  }

  async function followLog(id, signal) {
    const path = `/cluster/jobs/${encodeURIComponent(id)}/log?follow=true&tail=${LOG_TAIL}`;
    for (;;) {
      let resp;
      try {
        resp = await fetch(path, {headers: authHeaders(), cache: 'no-store', signal});
      } catch (error) {
        if (!signal.aborted) ui.logError.textContent = 'The log cannot be read: the agent ' +
          'cannot be reached.';
        return;
      }
      if (resp.status === 401) {
        await askForToken();
        if (signal.aborted) return;
        continue;
      }
      if (!resp.ok) {
        const body = await resp.json().catch(() => null);
        if (!signal.aborted) {
          ui.logError.textContent = 'The log cannot be read: ' +
            ((body && body.message) || `${resp.status} ${resp.statusText}`);
        }
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      try {
        for (;;) {
          const {done, value} = await reader.read();
          if (done) break;
          appendLog(decoder.decode(value, {stream: true}));
        }
      } catch (error) {
        if (!signal.aborted) appendLog('\n— the log stream broke off; click the job to ' +
                                       'follow it again —\n', 'log-note');
        return;
      }
      appendLog(decoder.decode());
      appendLog('\n— end of the log: the job has ended —\n', 'log-note');
      return;
    }
  }

  follow();
})();

// The audit log (admin): newest first, filtered by the server (GET /api/v1/audit pages with a
// cursor and examines a bounded range per request: docs/audit.md#reading-the-log), older pages on
// demand, and chain verification.

import * as api from '../api.js';
import {alertBox, busy, button, clearErrors, field, h, section, setAlert, showError, table, valueOf, when} from '../dom.js';

const PAGE = 100;
const DEBOUNCE_MS = 300;

export async function renderAudit(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'Audit log'));
  main.append(verifySection());

  const alert = alertBox();
  // What `actor` holds: a user's name for their sessions, "name (token id)" for their API
  // tokens, "cli:verb" for the command line, "system", "anonymous" (failed logins).
  const actor = field({name: 'actor', label: 'Actor', placeholder: 'e.g. admin',
    help: 'A user name; also finds their API tokens ("admin (token …)"). Or cli:init, system, anonymous.'});
  const action = field({name: 'action', label: 'Action starts with', placeholder: 'e.g. session.'});
  const outcome = field({name: 'outcome', label: 'Outcome', type: 'select', options: [['', 'any'], 'ok', 'denied', 'failed', 'error']});
  const target = field({name: 'target', label: 'Target starts with', placeholder: 'e.g. query:'});
  const text = field({name: 'text', label: 'Target or details contain'});
  const since = field({name: 'since', label: 'From (your time)', type: 'datetime-local', step: 1});
  const until = field({name: 'until', label: 'Until (your time)', type: 'datetime-local', step: 1});
  const filters = h('form', {class: 'filters', role: 'search', 'aria-label': 'Filter the audit log'},
    actor, action, outcome, target, text, since, until);
  const status = h('p', {class: 'muted audit-status', 'aria-live': 'polite'});
  const holder = h('div', {});
  let entries = [];
  let cursor = null;
  let scanned = null; // {from, to}: the positions looked at since the first page
  let asked = 0; // the latest request's number: an answer to an older one is dropped

  const isoOf = (wrapper) => {
    const value = valueOf(wrapper);
    if (!value) return '';
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? value : date.toISOString();
  };
  const params = () => ({
    actor: valueOf(actor).trim(), action: valueOf(action).trim(), outcome: valueOf(outcome),
    target: valueOf(target).trim(), text: valueOf(text).trim(), since: isoOf(since), until: isoOf(until),
  });
  const filtered = () => Object.values(params()).some(Boolean);

  const more = button('Load older entries', async () => {
    try {
      await busy(more, 'Loading…', () => load(false));
    } catch (error) {
      showError(filters, error, alert);
    }
  }, {id: 'audit-more'});

  const draw = () => {
    const n = (value) => Number(value).toLocaleString('en-US');
    const range = scanned ? `entries ${n(scanned.to)}–${n(scanned.from)}` : '';
    if (entries.length) {
      status.textContent = `${entries.length} ${entries.length === 1 ? 'entry' : 'entries'} shown`
        + (filtered() && range ? `, from a search of ${range}` : '')
        + (cursor ? '. Older entries are not loaded yet.' : '.');
      holder.replaceChildren(table(['#', 'Time', 'Actor', 'Action', 'Target', 'Outcome', 'Client', 'Details'], entries.map((e) => [
        String(e.position), when(e.time), e.actor, e.action, e.target || '', h('span', {class: `outcome ${e.outcome}`}, e.outcome),
        e.client || '', h('code', {class: 'details'}, e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : ''),
      ]), {label: 'Audit entries', class: 'audit'}));
    } else {
      status.textContent = '';
      let message;
      if (!filtered()) {
        message = 'The audit log is empty. Entries appear here as people log in, change settings and run queries.';
      } else if (cursor) {
        message = `No matches in ${range}. Older entries have not been searched yet: search older, or narrow the filters (an actor or an action finds its entries fastest).`;
      } else {
        message = 'No entries match these filters. Change or clear a filter to see more.';
      }
      holder.replaceChildren(h('div', {class: 'empty-state', role: 'status', id: 'audit-empty'}, h('p', {}, message)));
    }
    more.textContent = entries.length ? 'Load older entries' : 'Search older entries';
    more.hidden = !cursor;
  };

  // `fresh`: the filters changed, start again from the newest entry; else the next page.
  const load = async (fresh) => {
    const number = ++asked;
    const query = {...params(), limit: PAGE, cursor: fresh ? null : cursor};
    const data = await api.get(`/api/v1/audit${api.qs(query)}`);
    if (number !== asked) return; // the filters changed meanwhile: a newer answer follows
    clearErrors(filters);
    setAlert(alert, '');
    if (fresh) {
      entries = [];
      scanned = null;
    }
    entries.push(...data.entries);
    cursor = data.cursor;
    scanned = {from: scanned ? scanned.from : data.scanned_from, to: data.scanned_to};
    draw();
  };

  let timer = null;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        await load(true);
      } catch (error) {
        clearErrors(filters);
        showError(filters, error, alert);
      }
    }, DEBOUNCE_MS);
  };
  filters.addEventListener('input', changed);
  filters.addEventListener('change', changed);
  filters.addEventListener('submit', (event) => event.preventDefault());
  main.append(section('Entries', alert, filters, status, holder, h('div', {class: 'actions'}, more)));
  await load(true);
}

function verifySection() {
  const status = h('p', {class: 'muted', id: 'verify-status', 'aria-live': 'polite'}, 'Reading the chain\u2019s status…');
  const result = h('div', {id: 'verify-result', 'aria-live': 'polite'});
  const showStatus = async () => {
    try {
      const s = await api.get('/api/v1/audit/status');
      const v = s.verified;
      const last = !v ? 'Not verified in the background yet.'
        : v.ok ? `Verified through entry ${v.position} at ${when(v.time)}.`
          : `The last background verification found the chain broken at entry ${v.broken_at} (${when(v.time)}).`;
      status.textContent = `${last} Head: entry ${s.head ? s.head.position : '—'}. Chain: ${s.chain.summary}.`;
    } catch (error) {
      status.textContent = error.message;
    }
  };
  const run = (control, full) => async () => {
    result.replaceChildren(h('p', {class: 'muted'}, full ? 'Verifying every entry…' : 'Verifying the entries since the last verification…'));
    try {
      const r = await busy(control, 'Verifying…', () => api.get(`/api/v1/audit/verify${full ? '?full=1' : ''}`));
      const from = r.mode === 'incremental' && r.start.marker ? ` from entry ${r.start.position + 1}` : '';
      result.replaceChildren(r.ok
        ? h('div', {class: 'alert success', role: 'status'}, `Chain intact${from}: ${r.entries} entries checked, through entry ${r.through} (${r.chain.summary}).`)
        : h('div', {class: 'alert error', role: 'alert'},
          `Chain broken at entry ${r.first_broken.position}: ${r.first_broken.reason}. ${r.entries} entries checked${from}.`));
    } catch (error) {
      result.replaceChildren(h('div', {class: 'alert error', role: 'alert'}, error.message));
    }
    await showStatus();
  };
  const recent = button('Verify new entries', () => run(recent, false)(), {class: 'primary', id: 'verify'});
  const everything = button('Verify everything', () => run(everything, true)(), {id: 'verify-full'});
  showStatus();
  return section('Chain verification',
    h('p', {class: 'muted'}, 'Each entry carries a MAC, under a key of the keyring, over its content and the entry before it: an edited, deleted or moved entry breaks the chain, even if every later link is recomputed without the key. The appliance verifies new entries in the background.'),
    status,
    h('div', {class: 'actions'}, recent, everything), result);
}

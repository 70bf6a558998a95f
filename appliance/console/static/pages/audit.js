// The audit log (admin): newest first, filters, older pages, and chain verification.

import * as api from '../api.js';
import {alertBox, busy, button, field, h, section, setAlert, table, valueOf, when} from '../dom.js';

const PAGE = 200;

export async function renderAudit(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'Audit log'));
  main.append(verifySection());

  const alert = alertBox();
  const entries = [];
  let next = null;
  const actor = field({name: 'actor', label: 'Actor', placeholder: 'e.g. user:admin'});
  const action = field({name: 'action', label: 'Action starts with', placeholder: 'e.g. session.'});
  const outcome = field({name: 'outcome', label: 'Outcome', type: 'select', options: [['', 'any'], 'ok', 'denied', 'failed', 'error']});
  const text = field({name: 'text', label: 'Target or details contain'});
  const filters = h('form', {class: 'filters', role: 'search', 'aria-label': 'Filter the audit log'}, actor, action, outcome, text);
  const count = h('p', {class: 'muted', 'aria-live': 'polite'});
  const holder = h('div', {});
  const more = button('Load older entries', async () => {
    try {
      await busy(more, 'Loading…', () => load());
    } catch (error) {
      setAlert(alert, error.message);
    }
  });

  const matches = (entry) => {
    const a = valueOf(actor).trim().toLowerCase();
    const act = valueOf(action).trim().toLowerCase();
    const out = valueOf(outcome);
    const t = valueOf(text).trim().toLowerCase();
    return (!a || String(entry.actor).toLowerCase().includes(a))
      && (!act || String(entry.action).toLowerCase().startsWith(act))
      && (!out || entry.outcome === out)
      && (!t || `${entry.target} ${JSON.stringify(entry.details)}`.toLowerCase().includes(t));
  };
  const draw = () => {
    const shown = entries.filter(matches);
    count.textContent = `${shown.length} of ${entries.length} loaded entries${next ? ' (older entries not loaded yet)' : ''}.`;
    holder.replaceChildren(table(['#', 'Time', 'Actor', 'Action', 'Target', 'Outcome', 'Client', 'Details'], shown.map((e) => [
      String(e.position), when(e.time), e.actor, e.action, e.target || '', h('span', {class: `outcome ${e.outcome}`}, e.outcome),
      e.client || '', h('code', {class: 'details'}, e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : ''),
    ]), {label: 'Audit entries', class: 'audit'}));
    more.hidden = !next;
  };
  const load = async () => {
    const data = await api.get(`/api/v1/audit${api.qs({limit: PAGE, before: next && next.before})}`);
    entries.push(...data.entries);
    next = data.next;
    draw();
  };
  filters.addEventListener('input', draw);
  filters.addEventListener('submit', (event) => event.preventDefault());
  main.append(section('Entries', alert, filters, count, holder, h('div', {class: 'actions'}, more)));
  await load();
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

// TLS (admin): the certificate served, its names and expiry, the next renewal, the last error,
// and a renew button (ACME mode); then the instances sharing the store (pages/instances.js).

import * as api from '../api.js';
import {busy, button, h, section, when} from '../dom.js';
import {instancesSection} from './instances.js';

export async function renderTls(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'TLS certificate'));
  const facts = h('div', {});
  const result = h('div', {'aria-live': 'polite', id: 'renew-result'});
  const draw = (t) => {
    const days = t.not_after ? Math.floor((new Date(t.not_after) - Date.now()) / 86400000) : null;
    facts.replaceChildren(h('dl', {class: 'facts', id: 'tls-facts'},
      h('dt', {}, 'Mode'), h('dd', {}, t.mode),
      h('dt', {}, 'Names'), h('dd', {}, (t.names || []).length ? h('ul', {class: 'plain'}, t.names.map((n) => h('li', {}, n))) : '—'),
      h('dt', {}, 'Issuer'), h('dd', {}, t.issuer || '—'),
      h('dt', {}, 'Expires'), h('dd', {}, t.not_after ? `${when(t.not_after)} (${days} days)` : '—'),
      h('dt', {}, 'Next renewal'), h('dd', {}, t.next_renewal ? when(t.next_renewal) : (t.mode === 'files' ? 'by whoever provides the files' : '—')),
      h('dt', {}, 'Last check'), h('dd', {}, when(t.last_check)),
      h('dt', {}, 'Last error'), h('dd', {class: t.last_error ? 'error-text' : ''}, t.last_error || 'none'),
      t.fingerprint_sha256 ? [h('dt', {}, 'SHA-256 fingerprint'), h('dd', {class: 'mono wrap'}, t.fingerprint_sha256)] : null,
      t.temporary ? [h('dt', {}, 'Note'), h('dd', {}, 'A temporary certificate is served until the first one is issued.')] : null));
    renew.hidden = t.mode !== 'acme';
    note.hidden = t.mode === 'acme';
  };
  const note = h('p', {class: 'muted'}, 'Renewing on request is for ACME certificates; local and file certificates are replaced by the appliance or by you.');
  const renew = button('Renew now', async () => {
    result.replaceChildren(h('p', {class: 'muted'}, 'Ordering a certificate from the ACME CA; this can take a minute…'));
    try {
      const t = await busy(renew, 'Renewing…', () => api.post('/api/v1/tls/renew'));
      draw(t);
      result.replaceChildren(h('div', {class: 'alert success', role: 'status'}, t.renewed ? 'A new certificate is being served.' : 'No renewal was needed.'));
    } catch (error) {
      result.replaceChildren(h('div', {class: 'alert error', role: 'alert'}, `Renewal failed: ${error.message}`));
    }
  }, {class: 'primary', id: 'renew'});
  main.append(section('Certificate', facts, h('div', {class: 'actions'}, renew), note, result));
  draw(await api.get('/api/v1/tls'));
  main.append(instancesSection());
}

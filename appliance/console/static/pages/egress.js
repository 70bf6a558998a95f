// Egress (admin): the source address, the policy editor, the addresses to allow-list in the
// database's firewall, and a probe that asks the policy (and tries a connection) for host:port.

import * as api from '../api.js';
import {alertBox, busy, clearErrors, confirmButton, field, h, section, setAlert, showError, valueOf} from '../dom.js';

const lines = (text) => text.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);

export async function renderEgress(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'Egress'));
  const addresses = h('div', {id: 'addresses-to-allow'});
  const policyHolder = h('div', {});
  const draw = (e) => {
    addresses.replaceChildren(
      e.addresses_to_allow && e.addresses_to_allow.length
        ? h('ul', {class: 'plain mono'}, e.addresses_to_allow.map((a) => h('li', {}, a)))
        : h('p', {class: 'muted'}, 'Unknown until a source address is set or a route exists.'),
      h('p', {class: 'help'}, 'Allow these in your database firewall (pg_hba.conf, a security group): every outbound connection leaves from them.'));
    policyHolder.replaceChildren(policyForm(e, draw));
  };
  main.append(section('Addresses to allow-list', addresses), policyHolder, probeSection());
  draw(await api.get('/api/v1/egress'));
}

function policyForm(e, redraw) {
  const alert = alertBox();
  const overridden = new Set(e.overridden || []);
  const mark = (name) => (overridden.has(name) ? ' (set here, over the settings file)' : '');
  const source = field({name: 'source_address', label: 'Source address(es)', type: 'textarea', rows: 2, value: (e.source_address || []).join('\n'),
    help: `One IP address per line; empty: the kernel's choice.${mark('source_address')}`});
  const mode = field({name: 'mode', label: 'Mode', type: 'select', value: e.mode, options: [
    ['default', 'default: everything not denied'], ['strict', 'strict: only what the allow list names']], help: mark('mode') || undefined});
  const allow = field({name: 'allow', label: 'Allow', type: 'textarea', rows: 4, value: (e.allow || []).join('\n'),
    help: `One per line: a CIDR (10.0.0.0/8), a host name (db.example.com, *.example.com) or host:port.${mark('allow')}`});
  const deny = field({name: 'deny', label: 'Deny', type: 'textarea', rows: 4, value: (e.deny || []).join('\n'),
    help: `Same forms; deny wins over allow. Cloud metadata and link-local addresses are always denied.${mark('deny')}`});
  const privateNets = field({name: 'allow_private', label: 'Allow private networks (RFC 1918, ULA, loopback)', type: 'checkbox', value: e.allow_private});
  const save = h('button', {type: 'submit', class: 'primary'}, 'Save policy');
  const reset = confirmButton('Back to the settings file', 'Click again to reset', async (btn) => {
    try {
      redraw(await busy(btn, 'Resetting…', () => api.del('/api/v1/egress')));
    } catch (error) {
      setAlert(alert, error.message);
    }
  }, {hidden: !overridden.size});
  const form = h('form', {novalidate: true, id: 'egress-form'}, alert, source, mode, allow, deny, privateNets, h('div', {class: 'actions'}, save, reset));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const wanted = {
      source_address: lines(valueOf(source)), mode: valueOf(mode), allow: lines(valueOf(allow)),
      deny: lines(valueOf(deny)), allow_private: valueOf(privateNets),
    };
    // Only what changed: an untouched field keeps following the settings file.
    const body = Object.fromEntries(Object.entries(wanted).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(e[k])));
    if (!Object.keys(body).length) {
      setAlert(alert, 'Nothing changed.', 'info');
      return;
    }
    try {
      const saved = await busy(save, 'Saving…', () => api.put('/api/v1/egress', body));
      redraw(saved);
      const box = document.querySelector('#egress-form .alert');
      if (box) setAlert(box, 'Policy saved: it applies to the next connection.', 'success');
    } catch (error) {
      showError(form, error);
    }
  });
  return section('Policy', form);
}

function probeSection() {
  const alert = alertBox();
  const host = field({name: 'host', label: 'Host', required: true, placeholder: 'db.example.com'});
  const port = field({name: 'port', label: 'Port', type: 'number', required: true, min: 1, max: 65535, value: '5432'});
  const result = h('div', {id: 'probe-result', 'aria-live': 'polite'});
  const go = h('button', {type: 'submit'}, 'Probe');
  const form = h('form', {novalidate: true, class: 'inline-form', id: 'probe-form'}, alert, host, port, h('div', {class: 'actions'}, go));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    result.replaceChildren(h('p', {class: 'muted'}, 'Resolving and connecting…'));
    try {
      const r = await busy(go, 'Probing…', () => api.post('/api/v1/egress/probe', {host: valueOf(host).trim(), port: Number(valueOf(port))}));
      result.replaceChildren(h('dl', {class: 'facts'},
        h('dt', {}, 'Policy'), h('dd', {class: r.allowed ? 'ok-text' : 'error-text'}, r.allowed ? 'allowed' : 'denied'),
        h('dt', {}, 'Rule'), h('dd', {}, r.rule || '—'),
        h('dt', {}, 'Addresses'), h('dd', {}, (r.addresses || []).join(', ') || '—'),
        h('dt', {}, 'Connected'), h('dd', {}, r.connected ? 'yes' : 'no'),
        h('dt', {}, 'From'), h('dd', {}, r.source_address || '—'),
        r.error ? [h('dt', {}, 'Error'), h('dd', {class: 'error-text'}, r.error)] : null));
    } catch (error) {
      result.replaceChildren();
      showError(form, error);
    }
  });
  return section('Probe a destination', h('p', {class: 'muted'}, 'Checks the policy for host:port and tries a TCP connection from the source address.'), form, result);
}

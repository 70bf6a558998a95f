// Instances (admin, on the TLS page): the appliance processes sharing this store, from their
// heartbeats, with this one marked and "last seen N s ago". Read-only; refreshed while shown.

import * as api from '../api.js';
import {h, section, table, when} from '../dom.js';

const REFRESH_MS = 5000;

function ago(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function rows(data) {
  return (data.instances || []).map((i) => [
    h('span', {}, h('span', {class: 'mono'}, i.id), i.this ? h('strong', {class: 'this-instance'}, ' (this instance)') : null),
    i.alive ? 'alive' : h('span', {class: 'error-text'}, 'not seen'),
    i.hostname,
    h('span', {class: 'mono'}, i.address),
    i.version + (i.schema_version !== undefined ? ` (schema ${i.schema_version})` : ''),
    when(i.started_at),
    ago(i.seen_seconds_ago),
  ]);
}

export function instancesSection() {
  const body = h('div', {id: 'instances', 'aria-live': 'polite'}, h('p', {class: 'muted'}, 'Loading…'));
  const draw = async () => {
    let data;
    try {
      data = await api.get('/api/v1/instances');
    } catch (error) {
      body.replaceChildren(h('div', {class: 'alert error', role: 'alert'}, `Instances unavailable: ${error.message}`));
      return;
    }
    const list = rows(data);
    body.replaceChildren(list.length
      ? table(['Instance', 'State', 'Host', 'Address', 'Version', 'Started', 'Last seen'], list, {label: 'Instances'})
      : h('p', {class: 'muted'}, 'No instance has recorded a heartbeat yet.'));
  };
  const timer = setInterval(() => {
    if (!body.isConnected) { clearInterval(timer); return; }
    draw();
  }, REFRESH_MS);
  draw();
  return section('Instances',
    h('p', {class: 'muted'}, 'Every "appliance serve" sharing this store records a heartbeat. One not seen for three of its heartbeat intervals is shown as not seen; a clean stop removes it.'),
    body);
}

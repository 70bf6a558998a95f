// Keys (admin): the keyring's data key versions, the active one and how many fields each seals.

import * as api from '../api.js';
import {h, section, table, when} from '../dom.js';

export async function renderKeys(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'Encryption keys'));
  let data;
  try {
    data = await api.get('/api/v1/keys');
  } catch (error) {
    if (error.status !== 404) throw error;
    main.append(section('Key status', h('p', {}, 'This appliance does not serve key status over HTTP. On its host, run:'),
      h('pre', {class: 'mono'}, 'appliance keys status')));
    return;
  }
  const keys = data.keys || [];
  main.append(section('Data keys',
    h('p', {class: 'muted'}, 'Credentials are sealed with AES-256-GCM under the active data key; older versions stay until nothing uses them. Rotate with "appliance keys rotate".'),
    table(['Version', 'State', 'Created', 'Sealed fields'], keys.map((k) => [
      String(k.version), k.active ? 'active' : 'retiring', when(k.created_at), String(k.fields),
    ]), {label: 'Data keys'})));
}

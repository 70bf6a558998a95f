// Datasources (developer): the list, a create/edit form for each kind with write-only secrets,
// delete, and "test connection". A secret's value never comes back: only whether it is set.
// Fields marked `destination` say where the secrets are sent: changing one needs the secrets
// entered again (the server seals them for their destination and answers 409 otherwise).

import * as api from '../api.js';
import {alertBox, busy, button, clearErrors, confirmButton, field, h, section, setAlert, showError, table, valueOf, when} from '../dom.js';

// Each kind's form, as the server declares it (GET /api/v1/kinds: the kinds registry), fetched
// once per page load, in the server's order. A field or secret with `when` ({"auth": "basic"}) is
// shown only while the form's other fields hold those values. `where` ("{host}:{port}") says how
// the list shows where a datasource points; `body` ("sql" or "json") what a query's body is.
const INPUT_TYPES = {integer: 'number', boolean: 'checkbox', choice: 'select', url: 'url'};
let kindsLoading = null;

export function loadKinds() {
  if (!kindsLoading) {
    kindsLoading = api.get('/api/v1/kinds').then(({kinds}) => Object.fromEntries(kinds.map((k) => [k.name, formOf(k)])));
    kindsLoading.catch(() => { kindsLoading = null; });  // try again on the next visit
  }
  return kindsLoading;
}

const holds = (when, config) => Object.entries(when || {}).every(([key, value]) => config[key] === value);

function formOf(kind) {
  const fields = kind.fields.map((f) => ({
    name: f.name, label: f.label, type: INPUT_TYPES[f.type], value: f.default, required: f.required,
    min: f.min, max: f.max, help: f.help, placeholder: f.placeholder, destination: f.destination,
    options: f.choices && f.choices.map((c) => [c.value, c.label]),
    when: f.when && ((config) => holds(f.when, config)),
  }));
  // The keys other fields or secrets depend on: a change of one redraws the form.
  const redraws = new Set([...kind.fields, ...kind.secrets].flatMap((x) => Object.keys(x.when || {})));
  return {
    title: kind.title, fields, redraws, where: kind.where, body: kind.body,
    secrets: (config) => kind.secrets.filter((x) => holds(x.when, config)).map((x) => [x.name, x.label]),
  };
}

const LIMITS = [
  {name: 'max_connections', label: 'Pool size (connections)', value: 5, min: 1, max: 100},
  {name: 'statement_timeout_ms', label: 'Statement timeout (ms)', value: 30000, min: 1, max: 3600000},
  {name: 'max_rows', label: 'Most rows per run', value: 10000, min: 1, max: 10000000},
  {name: 'max_response_bytes', label: 'Largest response (bytes)', value: 16777216, min: 1, max: 1073741824},
];

export async function renderDatasources(ctx) {
  const [id] = ctx.args;
  const kinds = await loadKinds();
  if (id === 'new') return editor(ctx, kinds, null);
  if (id) return editor(ctx, kinds, await api.get(`/api/v1/datasources/${api.enc(id)}`));
  return list(ctx, kinds);
}

async function list(ctx, kinds) {
  const {main} = ctx;
  main.append(h('div', {class: 'page-head'}, h('h1', {tabindex: '-1'}, 'Datasources'),
    h('a', {class: 'button primary', href: '#/datasources/new'}, 'New datasource')));
  const data = await api.get('/api/v1/datasources');
  if (!data.datasources.length) {
    main.append(h('p', {class: 'muted'}, 'No datasources yet.'));
    return;
  }
  main.append(table(['Name', 'Kind', 'Where', 'Secrets', 'Updated'], data.datasources.map((ds) => [
    h('a', {href: `#/datasources/${encodeURIComponent(ds.id)}`, class: 'ds-name'}, ds.name),
    (kinds[ds.kind] || {title: ds.kind}).title,
    where(kinds[ds.kind], ds.config || {}),
    Object.entries(ds.secrets || {}).map(([k, v]) => `${k}: ${v.set ? 'set' : 'not set'}`).join(', ') || '—',
    when(ds.updated_at),
  ]), {label: 'Datasources', class: 'datasources'}));
}

// Where a datasource points: its kind's `where` with each {key} replaced by that config value
// (nothing when absent). Text only: the table sets it as a text node.
function where(kind, config) {
  if (!kind) return '';
  return kind.where.replace(/\{(\w+)\}/g, (_, key) => String(config[key] ?? ''));
}

// A write-only secret: on create an empty input; on edit "set"/"not set" and a Replace button.
function secretField(name, label, state, creating) {
  const input = field({name: `secrets.${name}`, field: `secrets.${name}`, label, type: 'password', autocomplete: 'new-password'});
  const wrapper = h('div', {class: 'secret', dataset: {field: `secrets.${name}`}});
  let intent = creating ? 'set' : 'keep';
  if (creating) {
    wrapper.append(input);
    wrapper.secretValue = () => (input.input.value ? input.input.value : undefined);
    wrapper.input = input.input;
    return wrapper;
  }
  const isSet = Boolean(state && state.set);
  const stateText = h('span', {class: `secret-state ${isSet ? 'is-set' : ''}`}, isSet ? 'set' : 'not set');
  const replace = button(isSet ? 'Replace' : 'Set', () => {
    intent = 'set';
    input.hidden = false;
    controls.hidden = true;
    input.input.focus();
  }, {class: 'small', 'aria-label': `${isSet ? 'Replace' : 'Set'} ${label.toLowerCase()}`});
  const remove = button('Remove', () => {
    intent = 'clear';
    stateText.textContent = 'will be removed when you save';
  }, {class: 'small', 'aria-label': `Remove ${label.toLowerCase()}`, hidden: !isSet});
  const keep = button('Keep the current value', () => {
    intent = 'keep';
    input.input.value = '';
    input.hidden = true;
    controls.hidden = false;
  }, {class: 'small link'});
  const controls = h('div', {class: 'secret-controls'}, h('span', {class: 'label-like'}, `${label}: `), stateText, ' ', replace, ' ', remove);
  input.hidden = true;
  input.append(keep);
  // Its own error slot, shown while the input is hidden (secrets_required names this secret).
  wrapper.append(h('p', {class: 'field-error', hidden: true}), controls, input);
  wrapper.input = input.input;
  wrapper.secretValue = () => {
    if (intent === 'clear') return null;
    if (intent === 'set' && input.input.value) return input.input.value;
    return undefined;
  };
  return wrapper;
}

// The same destination, as the server compares it: a REST base URL by its origin only.
function sameDestination(spec, before, after) {
  if (spec.type === 'checkbox') return Boolean(before) === Boolean(after);
  if (before === undefined || before === null || before === '') return after === undefined || after === null || after === '';
  if (spec.destination === 'origin') {
    try {
      return new URL(String(before)).origin === new URL(String(after)).origin;
    } catch {
      return false;
    }
  }
  return String(before) === String(after);
}

function editor(ctx, kinds, ds) {
  const {main, navigate} = ctx;
  const creating = !ds;
  main.append(h('p', {class: 'crumbs'}, h('a', {href: '#/datasources'}, 'Datasources'), ' / '),
    h('h1', {tabindex: '-1'}, creating ? 'New datasource' : ds.name));
  const alert = alertBox();
  const name = field({name: 'name', label: 'Name', required: true, value: ds ? ds.name : '',
    help: 'Letters, digits, space, _ . - (up to 100).'});
  const kind = field({name: 'kind', label: 'Kind', type: 'select', value: ds ? ds.kind : Object.keys(kinds)[0], disabled: !creating,
    options: Object.entries(kinds).map(([k, v]) => [k, v.title])});
  const config = {...(ds ? ds.config : {})};
  const kindArea = h('div', {class: 'kind-fields'});
  const secretArea = h('fieldset', {class: 'secrets'}, h('legend', {}, 'Secrets'));
  const limitsArea = h('details', {class: 'limits'}, h('summary', {}, 'Limits'));
  let fields = [];
  let secretFields = [];
  let limitFields = [];

  const current = () => {
    const out = {};
    for (const f of fields) out[f.spec.name] = valueOf(f);
    return out;
  };
  const draw = () => {
    const spec = kinds[valueOf(kind)];
    const values = fields.length ? current() : config;
    fields = spec.fields.filter((f) => !f.when || f.when({...defaults(spec), ...values})).map((f) => {
      const made = field({...f, field: `config.${f.name}`, value: values[f.name] ?? f.value});
      made.spec = f;
      if (spec.redraws.has(f.name)) made.input.addEventListener('change', draw);
      return made;
    });
    kindArea.replaceChildren(...fields);
    const cfg = {...defaults(spec), ...current()};
    const states = ds ? ds.secrets || {} : {};
    secretFields = spec.secrets(cfg).map(([n, label]) => {
      const made = secretField(n, label, states[n], creating);
      made.secretName = n;
      return made;
    });
    secretArea.replaceChildren(h('legend', {}, 'Secrets'),
      secretFields.length ? h('p', {class: 'help'}, 'Write-only: stored encrypted; never shown again, not even to admins.') : h('p', {class: 'muted'}, 'This kind takes no secret.'),
      ...secretFields);
    limitFields = LIMITS.map((l) => {
      const made = field({...l, type: 'number', step: 1, field: `config.${l.name}`, value: config[l.name] ?? l.value});
      made.spec = l;
      return made;
    });
    limitsArea.replaceChildren(h('summary', {}, 'Limits'), ...limitFields);
    checkDestination();
  };
  // Editing: which destination fields moved, and which set secrets would be kept (not allowed:
  // they were entered for the old destination). Shown as the user types, and checked on save.
  const destinationNote = h('div', {class: 'alert warning', id: 'destination-note', role: 'status', 'aria-live': 'polite', hidden: true});
  const movedLabels = () => (creating ? [] : fields.filter((f) => f.spec.destination && !sameDestination(f.spec, ds.config[f.spec.name], valueOf(f)))
    .map((f) => f.spec.label));
  const setSecrets = () => Object.entries((ds && ds.secrets) || {}).filter(([, v]) => v && v.set).map(([k]) => k);
  const keptSecrets = () => {
    const shown = new Map(secretFields.map((s) => [s.secretName, s]));
    return setSecrets().filter((n) => shown.has(n) && shown.get(n).secretValue() === undefined);
  };
  const checkDestination = () => {
    const moved = movedLabels();
    const kept = moved.length ? keptSecrets() : [];
    if (!kept.length) {
      destinationNote.hidden = true;
      destinationNote.textContent = '';
      return null;
    }
    const labels = new Map(secretFields.map((s) => [s.secretName, s.querySelector('label, .label-like')?.textContent.replace(/:\s*$/, '') || s.secretName]));
    const message = `Changing ${moved.join(', ')} changes where this datasource's secrets are sent. ` +
      `Enter ${kept.map((n) => labels.get(n) || n).join(', ')} again before you save: the stored value is sealed for the current destination and is never sent anywhere else.`;
    destinationNote.className = 'alert warning';  // clearErrors makes every alert an error
    destinationNote.textContent = message;
    destinationNote.hidden = false;
    return message;
  };
  kind.input.addEventListener('change', () => {
    fields = [];
    draw();
  });
  draw();

  const save = h('button', {type: 'submit', class: 'primary'}, creating ? 'Create datasource' : 'Save changes');
  const form = h('form', {novalidate: true, class: 'ds-form', id: 'datasource-form'}, alert, name, kind, kindArea, secretArea, limitsArea,
    destinationNote, h('div', {class: 'actions'}, save));
  form.addEventListener('input', checkDestination);
  form.addEventListener('change', checkDestination);
  form.addEventListener('click', () => setTimeout(checkDestination));  // Replace / Keep buttons
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const refused = checkDestination();
    if (refused) {
      setAlert(alert, refused);
      const first = secretFields.find((s) => keptSecrets().includes(s.secretName));
      if (first) first.querySelector('button')?.focus();
      return;
    }
    const cfg = {};
    for (const f of [...fields, ...limitFields]) {
      const raw = valueOf(f);
      if (f.spec.type === 'checkbox') cfg[f.spec.name] = raw;
      else if (raw === '') cfg[f.spec.name] = creating ? undefined : null;
      else if (f.spec.type === 'number' || LIMITS.includes(f.spec)) cfg[f.spec.name] = Number(raw);
      else cfg[f.spec.name] = raw.trim();
    }
    if (!creating) {
      // Keys of the old config that the form no longer shows (e.g. username after auth changed).
      for (const key of Object.keys(ds.config)) if (!(key in cfg)) cfg[key] = null;
    }
    const secrets = {};
    for (const s of secretFields) {
      const v = s.secretValue();
      if (v !== undefined) secrets[s.secretName] = v;
    }
    if (movedLabels().length) {
      // A secret the form no longer shows (e.g. the token after auth changed) was entered for
      // the old destination: it is cleared with the move.
      for (const n of setSecrets()) if (!(n in secrets)) secrets[n] = null;
    }
    const body = {name: valueOf(name).trim(), config: JSON.parse(JSON.stringify(cfg))};
    if (creating) body.kind = valueOf(kind);
    if (Object.keys(secrets).length) body.secrets = secrets;
    let saved;
    try {
      saved = await busy(save, 'Saving…', () => (creating
        ? api.post('/api/v1/datasources', body)
        : api.patch(`/api/v1/datasources/${api.enc(ds.id)}`, body)));
    } catch (error) {
      showError(form, error);
      return;
    } finally {
      for (const s of secretFields) s.input.value = '';
      for (const key of Object.keys(secrets)) delete secrets[key];
    }
    ctx.status(`Saved datasource ${saved.name}.`);
    navigate(`datasources/${saved.id}`);
  });
  main.append(form);
  if (!creating) main.append(testSection(ds), dangerSection(ds, navigate));
  name.input.focus();
}

function defaults(spec) {
  const out = {};
  for (const f of spec.fields) if (f.value !== undefined) out[f.name] = f.value;
  return out;
}

function testSection(ds) {
  const result = h('div', {id: 'test-result', 'aria-live': 'polite'});
  const test = button('Test connection', async () => {
    result.replaceChildren(h('p', {class: 'muted'}, 'Connecting…'));
    try {
      const r = await busy(test, 'Testing…', () => api.post(`/api/v1/datasources/${api.enc(ds.id)}/test`));
      result.replaceChildren(h('div', {class: 'alert success', role: 'status'}, `Connected to ${r.datasource || ds.name} in ${r.duration_ms} ms.`));
    } catch (error) {
      result.replaceChildren(h('div', {class: 'alert error', role: 'alert'}, `Connection failed: ${error.message}`));
    }
  }, {id: 'test-connection'});
  return section('Connection', h('p', {class: 'muted'}, 'Opens a fresh connection from the egress source address and runs a trivial command.'),
    h('div', {class: 'actions'}, test), result);
}

function dangerSection(ds, navigate) {
  const alert = alertBox();
  const remove = confirmButton('Delete datasource', 'Click again to delete', async (btn) => {
    try {
      await busy(btn, 'Deleting…', () => api.del(`/api/v1/datasources/${api.enc(ds.id)}`));
      navigate('datasources');
    } catch (error) {
      setAlert(alert, error.message);
    }
  }, {class: 'danger'});
  return section('Delete', alert, h('p', {class: 'muted'}, 'Refused while queries use it. Its sealed secrets are deleted with it.'), remove);
}

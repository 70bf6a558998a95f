// Queries: the list (for a viewer: the queries they may run, with descriptions and a search box);
// the editor (developer) with parameter declarations and binding errors shown at their line and
// column; the run form generated from the declarations; results streamed as NDJSON into a table
// that sorts by column and copies a cell, and downloads as CSV (from the server) or JSON. A viewer
// gets only names, descriptions, parameters and run forms (the API sends no more).

import * as api from '../api.js';
import {alertBox, busy, button, clearErrors, confirmButton, field, h, inputError, section, setAlert, showError, table, uid, valueOf} from '../dom.js';
import {loadKinds} from './datasources.js';

const SCALARS = ['string', 'integer', 'number', 'boolean', 'date', 'datetime'];
const TYPES = [...SCALARS, 'json', 'identifier', ...SCALARS.map((t) => `array<${t}>`)];
const MAX_SHOWN_ROWS = 10000;

export async function renderQueries(ctx) {
  const [id] = ctx.args;
  const developer = ctx.may('POST /api/v1/queries');  // may make and edit queries
  if (id === 'new' && developer) return editor(ctx, await loadKinds(), null);
  if (id) {
    const query = await api.get(`/api/v1/queries/${api.enc(id)}`);
    if (developer) return editor(ctx, await loadKinds(), query);
    ctx.main.append(h('p', {class: 'crumbs'}, h('a', {href: '#/queries'}, 'Queries'), ' / '), h('h1', {tabindex: '-1'}, query.name));
    if (query.description) ctx.main.append(h('p', {class: 'query-description'}, query.description));
    ctx.main.append(runPanel(query));
    return undefined;
  }
  return list(ctx, developer);
}

async function list(ctx, developer) {
  const {main} = ctx;
  main.append(h('div', {class: 'page-head'}, h('h1', {tabindex: '-1'}, developer ? 'Queries' : 'My queries'),
    developer ? h('a', {class: 'button primary', href: '#/queries/new'}, 'New query') : null));
  const data = await api.get('/api/v1/queries');
  if (!data.queries.length) {
    main.append(h('p', {class: 'muted empty'}, developer
      ? 'No queries yet. Create one with "New query" (a datasource comes first: see Datasources).'
      : 'No queries to run yet. A developer makes them; ask yours for the one you need.'));
    return;
  }
  if (!developer) {
    main.append(runnableList(data.queries));
    return;
  }
  let names = {};
  if (developer) {
    const ds = await api.get('/api/v1/datasources');
    names = Object.fromEntries(ds.datasources.map((d) => [d.id, d.name]));
  }
  main.append(table(['Name', 'Description', 'Datasource', 'Parameters', ''], data.queries.map((q) => {
    const open = h('a', {href: `#/queries/${encodeURIComponent(q.id)}`, class: 'q-name'}, q.name);
    const run = h('a', {href: `#/queries/${encodeURIComponent(q.id)}`, class: 'button small', 'aria-label': `Edit and run ${q.name}`}, 'Edit and run');
    return [open, q.description || '—', names[q.datasource_id] || q.datasource_id, paramSummary(q), run];
  }), {label: 'Queries', class: 'queries'}));
}

function paramSummary(q) {
  return (q.parameters || []).map((p) => `${p.name}: ${p.type}`).join(', ') || '—';
}

// The queries a viewer may run: name, description and parameters, filtered as they type. The
// filter is in the page (a viewer's list is the few queries made for them: tens, not thousands).
function runnableList(queries) {
  const search = field({name: 'query-search', label: 'Search queries', type: 'search', class: 'query-search',
    help: 'Matches names, descriptions and parameter names.'});
  const items = queries.map((q) => {
    const text = [q.name, q.description || '', ...(q.parameters || []).map((p) => `${p.name} ${p.description || ''}`)].join(' ').toLowerCase();
    const node = h('li', {},
      h('div', {class: 'q-title'},
        h('a', {href: `#/queries/${encodeURIComponent(q.id)}`, class: 'q-name'}, q.name),
        h('a', {href: `#/queries/${encodeURIComponent(q.id)}`, class: 'button small', 'aria-label': `Run ${q.name}`}, 'Run')),
      q.description ? h('p', {class: 'q-desc'}, q.description) : h('p', {class: 'q-desc muted'}, 'No description.'),
      h('p', {class: 'q-params muted'}, `Parameters: ${paramSummary(q)}`));
    return {node, text};
  });
  const list = h('ul', {class: 'query-list', 'aria-label': 'Queries you can run'}, items.map((i) => i.node));
  const none = h('p', {class: 'muted empty', hidden: true, role: 'status'});
  search.input.addEventListener('input', () => {
    const words = valueOf(search).toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const item of items) {
      item.node.hidden = !words.every((w) => item.text.includes(w));
      if (!item.node.hidden) shown += 1;
    }
    none.textContent = shown ? '' : `No query matches "${valueOf(search).trim()}". Try fewer words.`;
    none.hidden = shown > 0;
  });
  return h('div', {}, search, none, list);
}

// --- the editor -------------------------------------------------------------------------------

// `kinds`: the datasource kinds as the server declares them (loadKinds): whether a body is SQL
// text or JSON is the kind's `body`, never a test of its name.
function editor(ctx, kinds, query) {
  const {main, navigate} = ctx;
  const creating = !query;
  main.append(h('p', {class: 'crumbs'}, h('a', {href: '#/queries'}, 'Queries'), ' / '),
    h('h1', {tabindex: '-1'}, creating ? 'New query' : query.name));
  const alert = alertBox();
  const name = field({name: 'name', label: 'Name', required: true, value: query ? query.name : ''});
  const datasource = field({name: 'datasource_id', label: 'Datasource', type: 'select', required: true, options: [['', 'Loading…']]});
  const description = field({name: 'description', label: 'Description', value: query ? query.description || '' : ''});
  const body = field({
    name: 'body', label: 'Body', type: 'textarea', rows: 10, spellcheck: 'false', wrap: 'off', class: 'code',
    value: query ? (typeof query.body === 'string' ? query.body : JSON.stringify(query.body, null, 2)) : '',
    help: bodyHelp(kinds),
  });
  const caret = h('p', {class: 'caret-pos muted', 'aria-live': 'off'}, 'Line 1, column 1');
  const excerpt = h('pre', {class: 'error-excerpt', hidden: true, 'aria-hidden': 'true'});
  body.insertBefore(caret, body.querySelector('.field-error'));
  body.append(excerpt);
  const updateCaret = () => {
    const [line, column] = lineColumn(body.input.value, body.input.selectionStart);
    caret.textContent = `Line ${line}, column ${column}`;
  };
  for (const ev of ['keyup', 'click', 'input', 'focus']) body.input.addEventListener(ev, updateCaret);
  body.input.addEventListener('keydown', (event) => {
    // Tab indents inside the editor; Escape then Tab leaves it (keyboard users are not trapped).
    if (event.key === 'Escape') {
      body.input.dataset.escaped = '1';
    } else if (event.key === 'Tab' && !event.shiftKey && !body.input.dataset.escaped) {
      event.preventDefault();
      body.input.setRangeText('  ', body.input.selectionStart, body.input.selectionEnd, 'end');
    } else {
      delete body.input.dataset.escaped;
    }
  });

  const params = parameterEditor(query ? query.parameters : [], () => body.input.value);
  const visibleTo = visibilityField(query);
  const timeout = field({name: 'timeout_ms', label: 'Timeout (ms)', type: 'number', min: 1, step: 1, value: query && query.timeout_ms ? query.timeout_ms : '',
    help: 'Empty: the datasource\'s statement timeout.'});
  const maxRows = field({name: 'max_rows', label: 'Most rows', type: 'number', min: 1, step: 1, value: query && query.max_rows ? query.max_rows : '',
    help: 'Empty: the datasource\'s limit.'});
  const save = h('button', {type: 'submit', class: 'primary'}, creating ? 'Create query' : 'Save changes');
  const form = h('form', {novalidate: true, id: 'query-form', class: 'query-form'}, alert, name, datasource, description, visibleTo.node, body, params.node,
    h('details', {class: 'limits'}, h('summary', {}, 'Limits'), timeout, maxRows), h('div', {class: 'actions'}, save));

  api.get('/api/v1/datasources').then((data) => {
    const select = datasource.input;
    select.replaceChildren(h('option', {value: ''}, 'Choose a datasource'),
      ...data.datasources.map((d) => h('option', {value: d.id, selected: query && query.datasource_id === d.id, dataset: {kind: d.kind}}, `${d.name} (${d.kind})`)));
  }).catch((error) => showError(form, error));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    excerpt.hidden = true;
    const selected = datasource.input.selectedOptions[0];
    const kind = selected ? kinds[selected.dataset.kind] : undefined;
    let bodyValue = body.input.value;
    if (kind && kind.body === 'json') {
      try {
        bodyValue = JSON.parse(bodyValue);
      } catch (error) {
        const [line, column] = jsonErrorPlace(error, bodyValue);
        showBodyError(body, excerpt, `line ${line}, column ${column}: the body is not valid JSON (${error.message})`, line, column);
        return;
      }
    }
    let declarations;
    let groups;
    try {
      declarations = params.value();
      groups = visibleTo.value();
    } catch (error) {
      showError(form, error);
      return;
    }
    const payload = {name: valueOf(name).trim(), datasource_id: valueOf(datasource), body: bodyValue, parameters: declarations,
      description: valueOf(description).trim() || null, groups};
    if (valueOf(timeout)) payload.timeout_ms = Number(valueOf(timeout));
    else if (!creating) payload.timeout_ms = null;
    if (valueOf(maxRows)) payload.max_rows = Number(valueOf(maxRows));
    else if (!creating) payload.max_rows = null;
    let saved;
    try {
      saved = await busy(save, 'Saving…', () => (creating ? api.post('/api/v1/queries', payload)
        : api.patch(`/api/v1/queries/${api.enc(query.id)}`, payload)));
    } catch (error) {
      if (error.field === 'body' && error.line) showBodyError(body, excerpt, error.message, error.line, error.column);
      else showError(form, error);
      return;
    }
    ctx.flash(`Saved query ${saved.name}.`);
    navigate(`queries/${saved.id}`);
  });
  main.append(form);
  if (!creating) {
    main.append(runPanel(query));
    main.append(deleteSection(query, navigate));
  }
  name.input.focus();
}

// What a body is, by the kinds' `body`: SQL text, or a JSON object for the kinds named.
// "Visible to": every viewer (no groups), or the viewers of the groups listed (developers and
// admins see every query). The server keeps group names lower-case and checks them.
export function visibilityField(query) {
  const groups = query && query.groups ? query.groups : [];
  const name = 'visible-to';
  const radio = (value, text, checked) => h('label', {class: 'choice'},
    h('input', {type: 'radio', name, value, checked}), ' ', text);
  const all = radio('all', 'All viewers', !groups.length);
  const some = radio('groups', 'Only these groups', groups.length > 0);
  const list = field({name: 'groups', label: 'Groups', value: groups.join(', '),
    help: 'Group names, separated by commas. A group no user has yet is allowed.'});
  const sync = () => { list.hidden = !some.querySelector('input').checked; };
  for (const choice of [all, some]) choice.querySelector('input').addEventListener('change', sync);
  sync();
  const node = h('fieldset', {class: 'visible-to'},
    h('legend', {}, 'Visible to'), all, some, list);
  return {
    node,
    value() {
      if (!some.querySelector('input').checked) return [];
      const names = valueOf(list).split(/[\s,]+/).filter(Boolean);
      if (!names.length) throw Object.assign(new Error("'groups': name at least one group, or choose All viewers"), {field: 'groups'});
      return names;
    },
  };
}

function bodyHelp(kinds) {
  const json = Object.values(kinds).filter((k) => k.body === 'json').map((k) => k.title);
  const named = json.length > 1 ? `${json.slice(0, -1).join(', ')} and ${json[json.length - 1]}` : json[0];
  return 'SQL with {{ name }} bindings (each is a prepared-statement parameter)'
    + (named ? `; for ${named}, a JSON object.` : '.');
}

function lineColumn(text, offset) {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return [line, offset - before.lastIndexOf('\n')];
}

function offsetOf(text, line, column) {
  const lines = text.split('\n');
  let offset = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i += 1) offset += lines[i].length + 1;
  return Math.min(offset + column - 1, text.length);
}

// Where the browser's JSON parser stopped, as [line, column]: its message is the only place it
// says so (this reads the browser's own error, never the API's).
function jsonErrorPlace(error, text) {
  const m = /position (\d+)/.exec(error.message);
  return m ? lineColumn(text, Number(m[1])) : [1, 1];
}

// Show a body error at its line and column (1-based, from the API's error or the JSON parser):
// the message, the line itself with a caret under the column, and the text cursor placed there.
function showBodyError(body, excerpt, message, line, column) {
  const slot = body.querySelector('.field-error');
  slot.textContent = message;
  slot.hidden = false;
  body.input.setAttribute('aria-invalid', 'true');
  if (!line) return;
  column = column || 1;
  const text = body.input.value;
  const source = text.split('\n')[line - 1] ?? '';
  excerpt.textContent = `${String(line).padStart(4)} | ${source}\n       ${' '.repeat(Math.max(0, column - 1))}^`;
  excerpt.hidden = false;
  const offset = offsetOf(text, line, column);
  body.input.focus();
  body.input.setSelectionRange(offset, offset);
  body.input.dispatchEvent(new Event('focus'));
}

// The parameter declarations: one row per parameter, each a small labelled form. Row i is the
// API's `parameters[i]` (its errors name that field), renumbered whenever rows change.
function parameterEditor(initial, bodyText) {
  const rows = h('div', {class: 'params'});
  const node = h('fieldset', {class: 'param-editor'}, h('legend', {}, 'Parameters'), rows);
  const renumber = () => [...rows.children].forEach((r, i) => { r.dataset.field = `parameters[${i}]`; });
  const add = (p) => {
    const row = h('div', {class: 'param-row'});
    const pname = field({name: 'param-name', label: 'Parameter name', value: p.name || '', required: true});
    const type = field({name: 'param-type', label: 'Parameter type', type: 'select', options: TYPES, value: p.type || 'string'});
    const required = field({name: 'param-required', label: 'Required', type: 'checkbox', value: p.required ?? !('default' in p)});
    const def = field({name: 'param-default', label: 'Default', value: 'default' in p && p.default !== undefined ? display(p.default) : '',
      help: 'Empty: no default. Arrays and json: JSON text.'});
    const choices = field({name: 'param-choices', label: 'Choices', value: p.choices ? p.choices.map(display).join(', ') : '',
      help: 'Optional, comma-separated.'});
    const description = field({name: 'param-description', label: 'Parameter description', value: p.description || '', class: 'param-description',
      help: 'Shown to the people who run the query, under the input.'});
    const remove = button('Remove', () => { row.remove(); renumber(); }, {class: 'small danger', 'aria-label': 'Remove this parameter'});
    row.append(pname, type, required, def, choices, remove, description, h('p', {class: 'field-error', hidden: true}));
    row.input = pname.input;
    row.read = () => {
      const out = {name: valueOf(pname).trim(), type: valueOf(type), required: valueOf(required)};
      if (valueOf(description).trim()) out.description = valueOf(description).trim();
      const t = out.type;
      if (valueOf(def) !== '') {
        out.default = convert(t, valueOf(def), out.name, row.dataset.field);
        out.required = false;
      }
      if (valueOf(choices).trim()) out.choices = valueOf(choices).split(',').map((c) => convert(t.replace(/^array<(.*)>$/, '$1'), c.trim(), out.name, row.dataset.field));
      return out;
    };
    rows.append(row);
    renumber();
    return row;
  };
  for (const p of initial || []) add(p);
  const addButton = button('Add parameter', () => add({}).input.focus(), {class: 'small'});
  const detect = button('Declare bindings found in the body', () => {
    const known = new Set([...rows.children].map((r) => r.read ? r.input.value.trim() : ''));
    for (const m of bodyText().matchAll(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g)) {
      if (!known.has(m[1])) {
        known.add(m[1]);
        add({name: m[1], type: 'string', required: true});
      }
    }
  }, {class: 'small'});
  node.append(h('div', {class: 'actions'}, addButton, detect));
  return {node, value: () => { renumber(); return [...rows.children].map((r) => r.read()); }};
}

// A number as JSON writes one (no NaN, Infinity, hex or spaces).
const NUMBER_TEXT = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

// A whole number the browser holds exactly, else a refusal (JSON.stringify would send another).
function exactNumber(text, fail) {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) fail(`is too large for the console to send exactly (at most ${Number.MAX_SAFE_INTEGER.toLocaleString('en')} either way); use the API`);
  return n;
}

function display(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

// A typed value from a form's text; throws an error naming the parameter, about input `where`.
function convert(type, text, pname, where) {
  const fail = (what) => { throw inputError(where, `parameter '${pname}' ${what}`); };
  const array = /^array<(.*)>$/.exec(type);
  if (array) {
    const trimmed = text.trim();
    let items;
    if (trimmed.startsWith('[')) {
      try { items = JSON.parse(trimmed); } catch { fail('must be a JSON array'); }
      return items;
    }
    items = trimmed === '' ? [] : trimmed.split(/\r?\n/).map((s) => s.trim()).filter((s) => s !== '');
    return items.map((item) => convert(array[1], item, pname, where));
  }
  switch (type) {
    case 'integer': {
      if (!/^-?\d+$/.test(text.trim())) fail('must be a whole number');
      return exactNumber(text.trim(), fail);
    }
    case 'number': {
      if (!NUMBER_TEXT.test(text.trim())) fail('must be a number (like 12, -0.5 or 2.5e3)');
      const n = Number(text.trim());
      if (!Number.isFinite(n)) fail('is not a finite number (too large to represent)');
      return /^-?\d+$/.test(text.trim()) ? exactNumber(text.trim(), fail) : n;
    }
    case 'boolean': {
      if (!['true', 'false'].includes(text.trim())) fail('must be true or false');
      return text.trim() === 'true';
    }
    case 'json': {
      try { return JSON.parse(text); } catch { return fail('must be JSON'); }
    }
    default:
      return text;
  }
}

function deleteSection(query, navigate) {
  const alert = alertBox();
  const remove = confirmButton('Delete query', 'Click again to delete', async (btn) => {
    try {
      await busy(btn, 'Deleting…', () => api.del(`/api/v1/queries/${api.enc(query.id)}`));
      navigate('queries');
    } catch (error) {
      setAlert(alert, error.message);
    }
  }, {class: 'danger'});
  return section('Delete', alert, remove);
}

// --- the run form and results ------------------------------------------------------------------

function inputFor(p) {
  const label = `${p.name}${p.type === 'string' ? '' : ` (${p.type})`}`;
  const base = {name: `param-${p.name}`, field: `param.${p.name}`, label, required: p.required, help: p.description};
  const hasDefault = 'default' in p && p.default !== null && p.default !== undefined;
  const placeholder = hasDefault ? `default: ${display(p.default)}` : (p.required ? '' : 'optional');
  if (p.choices) {
    return field({...base, type: 'select', options: [['', p.required ? 'Choose…' : `(${placeholder || 'none'})`], ...p.choices.map((c) => [display(c), display(c)])]});
  }
  if (p.type.startsWith('array<')) {
    return field({...base, type: 'textarea', rows: 3, placeholder: 'one value per line', help: p.description || 'One value per line, or a JSON array.'});
  }
  switch (p.type) {
    case 'boolean':
      return field({...base, type: 'select', options: [['', p.required ? 'Choose…' : `(${placeholder || 'none'})`], 'true', 'false']});
    // Text inputs: a number input hides what it cannot parse (its value is then ""), and "1e400"
    // would run with the default. The text is checked here, and refused in words (convert).
    case 'integer':
      return field({...base, inputmode: 'numeric', placeholder});
    case 'number':
      return field({...base, inputmode: 'decimal', placeholder});
    case 'date':
      return field({...base, type: 'date', placeholder});
    case 'datetime':
      return field({...base, placeholder: placeholder || '2025-01-31T09:30:00Z', help: p.description || 'ISO 8601 with a time zone, e.g. 2025-01-31T09:30:00Z'});
    case 'json':
      return field({...base, type: 'textarea', rows: 3, placeholder});
    default:
      return field({...base, placeholder});
  }
}

export function runPanel(query) {
  const parameters = query.parameters || [];
  const alert = alertBox();
  const inputs = parameters.map((p) => {
    const made = inputFor(p);
    made.param = p;
    return made;
  });
  const run = h('button', {type: 'submit', class: 'primary', id: 'run'}, 'Run');
  const cancel = button('Cancel', () => controller && controller.abort(), {hidden: true, id: 'cancel-run'});
  const progress = h('p', {class: 'progress', role: 'status', 'aria-live': 'polite'});
  const results = h('div', {class: 'results', id: 'results'});
  const form = h('form', {novalidate: true, class: 'run-form', id: uid('run')}, alert,
    inputs.length ? inputs : h('p', {class: 'muted'}, 'This query takes no parameters.'),
    h('div', {class: 'actions'}, run, cancel), progress);
  let controller = null;

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const params = {};
    try {
      for (const input of inputs) {
        const p = input.param;
        const raw = valueOf(input);
        if (raw === '' || raw === undefined) {
          if (p.required) throw inputError(`param.${p.name}`, `parameter '${p.name}' is required`);
          continue;
        }
        params[p.name] = ['string', 'identifier', 'date', 'datetime'].includes(p.type) ? raw : convert(p.type, raw, p.name, `param.${p.name}`);
      }
    } catch (error) {
      results.replaceChildren();
      progress.textContent = '';
      showError(form, error);
      return;
    }
    controller = new AbortController();
    const started = performance.now();
    run.disabled = true;
    run.setAttribute('aria-busy', 'true');
    cancel.hidden = false;
    progress.textContent = 'Running…';
    progress.classList.add('working');
    results.replaceChildren();
    // The table appears with the first answer: a run that fails leaves no empty outline.
    const grid = resultTable();
    let count = 0;
    let summary = null;
    const show = () => {
      if (!grid.node.isConnected) results.replaceChildren(grid.node);
    };
    try {
      await api.stream(`/api/v1/queries/${api.enc(query.id)}/run`, {params}, (line, whole) => {
        if (whole) {
          grid.columns(line.columns);
          grid.rows(line.rows);
          count = line.rows.length;
          summary = line;
          show();
        } else if (Array.isArray(line)) {
          grid.row(line);
          count += 1;
          if (count % 500 === 0) progress.textContent = `Running… ${count.toLocaleString()} rows so far`;
        } else if (line.columns) {
          grid.columns(line.columns);
          show();
        } else if (line.error) {
          throw new api.ApiError(200, line.error.code, line.error.message, line.error);
        } else {
          summary = line;
        }
      }, {signal: controller.signal});
      grid.flush();
      const ms = summary && summary.duration_ms !== undefined ? summary.duration_ms : Math.round(performance.now() - started);
      progress.textContent = `${count.toLocaleString()} row${count === 1 ? '' : 's'} in ${ms} ms`
        + (summary && summary.truncated ? ' — truncated at the row limit' : '')
        + (count > MAX_SHOWN_ROWS ? ` (the first ${MAX_SHOWN_ROWS.toLocaleString()} are shown)` : '');
      const result = {columns: grid.names(), rows: grid.all(), row_count: count,
        truncated: Boolean(summary && summary.truncated), duration_ms: summary ? summary.duration_ms : null};
      results.replaceChildren(downloads(query, params, result), count ? grid.node
        : h('p', {class: 'muted empty', id: 'no-rows'}, 'The query ran and returned no rows. Try other values.'));
    } catch (error) {
      grid.flush();
      if (error.name === 'AbortError') {
        progress.textContent = `Cancelled after ${count.toLocaleString()} rows.`;
        if (!count) results.replaceChildren();
      } else {
        progress.textContent = '';
        results.replaceChildren();
        showError(form, error);
      }
    } finally {
      controller = null;
      run.disabled = false;
      run.removeAttribute('aria-busy');
      cancel.hidden = true;
      progress.classList.remove('working');
    }
  });
  return section('Run', form, results);
}

// A file name as the server makes one (result_csv.filename): letters, digits, '.', '_', '-' and
// spaces, no leading dot, at most 100 characters.
function fileName(name, extension) {
  const safe = name.replace(/[^A-Za-z0-9._ -]+/g, '_').replace(/^[ ._]+|[ ._]+$/g, '').slice(0, 100).replace(/[ ._]+$/, '');
  return `${safe || 'result'}.${extension}`;
}

function saveFile(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h('a', {href: url, download: name, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// "Download JSON": the result in hand, in the API's JSON shape. "Download CSV": the server writes
// it (one encoder, formulas defused), so the query runs again with the same values.
function downloads(query, params, result) {
  const note = h('span', {class: 'muted', role: 'status', 'aria-live': 'polite'});
  const json = button('Download JSON', () => {
    saveFile(new Blob([JSON.stringify(result)], {type: 'application/json'}), fileName(query.name, 'json'));
  }, {class: 'small', id: 'download-json'});
  const csv = button('Download CSV', async () => {
    note.textContent = '';
    try {
      const file = await busy(csv, 'Preparing CSV…', () => api.download(`/api/v1/queries/${api.enc(query.id)}/run`, {params}, 'text/csv'));
      saveFile(file.blob, file.name || fileName(query.name, 'csv'));
      note.textContent = 'CSV downloaded (the query ran again for it).';
    } catch (error) {
      note.textContent = `The CSV could not be made: ${error.message}`;
    }
  }, {class: 'small', id: 'download-csv', title: 'Runs the query again with the same values; the server writes the CSV'});
  return h('div', {class: 'result-tools'}, csv, json, note);
}

// The text a cell shows (and copies): null as "null" shown, copied as nothing.
function cellText(cell) {
  if (cell === null || cell === undefined) return '';
  return typeof cell === 'object' ? JSON.stringify(cell) : String(cell);
}

const collator = new Intl.Collator(undefined, {numeric: true});

// Ascending: nulls last, numbers by value, the rest as text (numeric-aware).
function compareCells(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return collator.compare(cellText(a), cellText(b));
}

// A results table that takes rows as they stream in and adds them to the DOM in batches. Every
// row is kept (the API caps a run's bytes); the first MAX_SHOWN_ROWS are shown. A header click
// sorts by that column (aria-sort says how); a cell is focusable (arrow keys move, Ctrl+C or
// Enter copies it), and "Copy cell" copies the focused one.
function resultTable() {
  const head = h('tr', {});
  const tbody = h('tbody', {});
  const copied = h('span', {class: 'muted', role: 'status', 'aria-live': 'polite'});
  const copyButton = button('Copy cell', () => copyCell(focused), {class: 'small', id: 'copy-cell', disabled: true});
  const wrap = h('div', {class: 'table-wrap results-table', tabindex: '0', role: 'region', 'aria-label': 'Results'},
    h('table', {}, h('thead', {}, head), tbody));
  const node = h('div', {class: 'result-grid'}, h('div', {class: 'result-tools'}, copyButton, h('span', {class: 'muted'}, 'Click a header to sort; Ctrl+C or Enter copies the selected cell.'), copied), wrap);
  let all = [];
  let names = [];
  let pending = [];
  let shown = 0;
  let scheduled = false;
  let focused = null;
  let order = {column: -1, direction: 'none'};
  const rowNode = (row) => h('tr', {}, row.map((cell) => h('td', {tabindex: '-1'},
    cell === null ? h('span', {class: 'null'}, 'null') : cellText(cell))));
  const flush = () => {
    scheduled = false;
    const fragment = document.createDocumentFragment();
    for (const row of pending) {
      if (shown >= MAX_SHOWN_ROWS) break;
      fragment.append(rowNode(row));
      shown += 1;
    }
    pending = [];
    tbody.append(fragment);
    const first = tbody.querySelector('td');
    if (first && !tbody.querySelector('td[tabindex="0"]')) first.tabIndex = 0;
  };
  const schedule = () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };
  const redraw = () => {
    tbody.replaceChildren();
    shown = 0;
    pending = all.slice();
    focused = null;
    copyButton.disabled = true;
    flush();
  };
  const sortBy = (index) => {
    const direction = order.column === index && order.direction === 'ascending' ? 'descending' : 'ascending';
    order = {column: index, direction};
    const sign = direction === 'ascending' ? 1 : -1;
    all = all.map((row, i) => [row, i]).sort((x, y) => sign * compareCells(x[0][index], y[0][index]) || x[1] - y[1]).map((x) => x[0]);
    for (const [i, th] of [...head.children].entries()) {
      th.setAttribute('aria-sort', i === index ? direction : 'none');
      th.querySelector('.sort-mark').textContent = i === index ? (direction === 'ascending' ? '▲' : '▼') : '';
    }
    redraw();
  };
  const copyCell = async (td) => {
    if (!td) return;
    const [r, c] = [td.parentElement.sectionRowIndex, td.cellIndex];
    const text = cellText(all[r] ? all[r][c] : td.textContent);
    try {
      await navigator.clipboard.writeText(text);
      copied.textContent = `Copied ${names[c] || 'the cell'} of row ${r + 1}.`;
    } catch {
      copied.textContent = 'The browser did not allow copying; select the text instead.';
    }
  };
  const select = (td) => {
    if (!td) return;
    for (const other of tbody.querySelectorAll('td[tabindex="0"]')) other.tabIndex = -1;
    td.tabIndex = 0;
    td.focus();
    focused = td;
    copyButton.disabled = false;
  };
  tbody.addEventListener('click', (event) => select(event.target.closest('td')));
  tbody.addEventListener('focusin', (event) => {
    const td = event.target.closest('td');
    if (td) {
      focused = td;
      copyButton.disabled = false;
    }
  });
  tbody.addEventListener('keydown', (event) => {
    const td = event.target.closest('td');
    if (!td) return;
    const row = td.parentElement;
    const moves = {
      ArrowRight: () => td.nextElementSibling,
      ArrowLeft: () => td.previousElementSibling,
      ArrowDown: () => row.nextElementSibling && row.nextElementSibling.cells[td.cellIndex],
      ArrowUp: () => row.previousElementSibling && row.previousElementSibling.cells[td.cellIndex],
    };
    if (moves[event.key]) {
      event.preventDefault();
      select(moves[event.key]());
    } else if (event.key === 'Enter' || ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === 'c' && !String(window.getSelection()))) {
      event.preventDefault();
      copyCell(td);
    }
  });
  return {
    node,
    flush,
    names: () => names,
    all: () => all,
    columns(list) {
      names = list.map((n) => (typeof n === 'string' ? n : (n && n.name) || String(n)));
      head.replaceChildren(...names.map((name, i) => h('th', {scope: 'col', 'aria-sort': 'none'},
        h('button', {type: 'button', class: 'sort', onclick: () => sortBy(i)}, name, h('span', {class: 'sort-mark', 'aria-hidden': 'true'})))));
    },
    row(values) { all.push(values); pending.push(values); schedule(); },
    rows(list) { all.push(...list); pending.push(...list); flush(); },
  };
}

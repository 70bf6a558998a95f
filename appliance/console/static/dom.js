// DOM helpers: every piece of data reaches the page as a text node or a property, never as markup.

let counter = 0;

export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

// h('p', {class: 'x', onclick: fn}, 'text', child, [more]) builds an element.
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      node.className = value;
    } else if (key === 'text') {
      node.textContent = String(value);
    } else if (key === 'value' || key === 'checked' || key === 'selected') {
      node[key] = value;
    } else if (key === 'dataset') {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// A labelled form field: {name, label, type, value, required, help, options, placeholder, ...}.
// The wrapper carries data-field so API errors can be shown next to it.
export function field(spec) {
  const id = uid('f');
  const errorId = `${id}-error`;
  const helpId = spec.help ? `${id}-help` : null;
  const describedBy = [helpId, errorId].filter(Boolean).join(' ');
  let input;
  const common = {
    id, name: spec.name, required: spec.required, 'aria-describedby': describedBy,
    autocomplete: spec.autocomplete || 'off', placeholder: spec.placeholder,
    disabled: spec.disabled, readonly: spec.readonly, spellcheck: spec.spellcheck,
  };
  if (spec.type === 'select') {
    input = h('select', common, (spec.options || []).map((option) => {
      const [value, text] = Array.isArray(option) ? option : [option, option];
      return h('option', {value: String(value), selected: String(value) === String(spec.value ?? '')}, text);
    }));
  } else if (spec.type === 'textarea') {
    input = h('textarea', {...common, rows: spec.rows || 4, wrap: spec.wrap});
    input.value = spec.value ?? '';
  } else if (spec.type === 'checkbox') {
    input = h('input', {...common, type: 'checkbox', checked: Boolean(spec.value)});
  } else {
    input = h('input', {
      ...common, type: spec.type || 'text', value: spec.value ?? '', min: spec.min, max: spec.max,
      step: spec.step, inputmode: spec.inputmode, pattern: spec.pattern,
    });
  }
  const label = h('label', {for: id}, spec.label);
  const wrapper = h('div', {class: `field ${spec.type === 'checkbox' ? 'field-check' : ''} ${spec.class || ''}`, dataset: {field: spec.field || spec.name}},
    spec.type === 'checkbox' ? [input, label] : [label, input],
    spec.help ? h('p', {class: 'help', id: helpId}, spec.help) : null,
    h('p', {class: 'field-error', id: errorId, hidden: true}));
  wrapper.input = input;
  return wrapper;
}

// Value of a field created by field(): booleans for checkboxes, strings otherwise.
export function valueOf(wrapper) {
  const input = wrapper.input;
  return input.type === 'checkbox' ? input.checked : input.value;
}

export function button(text, onclick, attrs) {
  return h('button', {type: 'button', ...(attrs || {}), onclick}, text);
}

// An alert box at the top of a form or section; shown by showError when no field matches.
export function alertBox() {
  return h('div', {class: 'alert', role: 'alert', hidden: true});
}

export function setAlert(box, message, kind) {
  box.className = `alert ${kind || 'error'}`;
  box.textContent = message || '';
  box.hidden = !message;
}

// An error about one input of a form, found before anything is sent: the shape of the API's
// errors (api.js's ApiError), so showError places both the same way.
export function inputError(field, message) {
  return Object.assign(new Error(message), {field, line: null, column: null});
}

// The wrapper of the input an error's `field` names (its data-field): the field itself, else the
// nearest enclosing one (`parameters[1].type` is shown on `parameters[1]`), else null.
export function fieldFor(form, name) {
  if (typeof name !== 'string' || !name) return null;
  const nodes = [...form.querySelectorAll('[data-field]')];
  for (let key = name; key; key = key.slice(0, Math.max(0, key.lastIndexOf('.')))) {
    const found = nodes.find((node) => node.dataset.field === key);
    if (found) return found;
  }
  return null;
}

export function clearErrors(form) {
  for (const node of form.querySelectorAll('.field-error')) {
    node.textContent = '';
    node.hidden = true;
  }
  for (const node of form.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
  for (const node of form.querySelectorAll('.alert')) setAlert(node, '');
}

// Show an error in words next to the input its `field` names, else in the form's alert box.
export function showError(form, error, fallbackBox) {
  const message = error && error.message ? error.message : String(error);
  const wrapper = fieldFor(form, error ? error.field : null);
  const slot = wrapper ? wrapper.querySelector('.field-error') : null;
  if (slot && !slot.parentElement.closest('[hidden]')) {  // an input not shown: the alert box
    slot.textContent = message;
    slot.hidden = false;
    const input = wrapper.input || wrapper.querySelector('input, textarea, select');
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
    return wrapper;
  }
  const box = fallbackBox || form.querySelector('.alert');
  if (box) {
    setAlert(box, message, 'error');
    box.scrollIntoView({block: 'nearest'});
  }
  return null;
}

// Run `work` with the button disabled and a progress label; returns work's result.
export async function busy(btn, label, work) {
  const original = btn.textContent;
  btn.disabled = true;
  btn.setAttribute('aria-busy', 'true');
  btn.textContent = label;
  btn.classList.add('working');
  try {
    return await work();
  } finally {
    btn.disabled = false;
    btn.removeAttribute('aria-busy');
    btn.classList.remove('working');
    btn.textContent = original;
  }
}

// A time as the API writes it (RFC 3339 UTC, `2026-12-03T12:00:00.123Z`) as `2026-12-03 12:00:00 UTC`.
export function when(value) {
  if (value === null || value === undefined || value === '') return '—';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC').replace(/Z$/, ' UTC');
}

// A table from column names and rows of cells (strings, numbers, nodes).
export function table(columns, rows, attrs) {
  return h('div', {class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': (attrs && attrs.label) || 'table'},
    h('table', attrs && attrs.class ? {class: attrs.class} : {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, row.map((cell, i) => h('td', {dataset: {label: columns[i] || ''}}, cellNode(cell))))))));
}

export function cellNode(cell) {
  if (cell instanceof Node) return cell;
  if (cell === null || cell === undefined) return h('span', {class: 'null'}, 'null');
  if (typeof cell === 'object') return JSON.stringify(cell);
  return String(cell);
}

export function section(title, ...children) {
  const id = uid('s');
  return h('section', {class: 'card', 'aria-labelledby': id}, h('h2', {id}, title), children);
}

// A button that asks for a second click (no modal dialog) before running a destructive action.
export function confirmButton(text, confirmText, action, attrs) {
  let armed = null;
  const btn = button(text, async () => {
    if (!armed) {
      btn.textContent = confirmText;
      btn.classList.add('armed');
      armed = setTimeout(() => {
        armed = null;
        btn.textContent = text;
        btn.classList.remove('armed');
      }, 6000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    btn.textContent = text;
    btn.classList.remove('armed');
    await action(btn);
  }, attrs);
  return btn;
}

// A modal confirmation (the page's own <dialog>, never window.confirm): resolves true when the
// action is confirmed, false on Cancel or Escape. Focus starts on Cancel and returns to where it
// was. `text` is shown as text.
export function confirmDialog({title, text, confirm, danger}) {
  const returnTo = document.activeElement;
  const titleId = uid('dlg');
  const cancelButton = h('button', {type: 'button', value: 'cancel'}, 'Cancel');
  const confirmButtonNode = h('button', {type: 'button', value: 'confirm', class: danger ? 'danger-fill' : 'primary'}, confirm);
  const dialog = h('dialog', {class: 'confirm', 'aria-labelledby': titleId},
    h('h2', {id: titleId}, title), h('p', {}, text), h('div', {class: 'actions'}, cancelButton, confirmButtonNode));
  document.body.append(dialog);
  return new Promise((resolve) => {
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      if (returnTo && returnTo.focus) returnTo.focus();
      resolve(answer);
    };
    cancelButton.addEventListener('click', () => close(false));
    confirmButtonNode.addEventListener('click', () => close(true));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      close(false);
    });
    dialog.showModal();
    cancelButton.focus();
  });
}

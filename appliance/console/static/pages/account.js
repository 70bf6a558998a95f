// My account: two-factor enrolment (QR code, setup key, recovery codes), new recovery codes
// (password and a current code), password, API tokens.

import * as api from '../api.js';
import {alertBox, busy, button, clearErrors, field, h, inputError, section, setAlert, showError, table, valueOf, when} from '../dom.js';


export async function renderAccount(ctx) {
  const {main, session} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'My account'));
  const me = await api.get('/api/v1/users/me');
  if (session.passwordChange) {
    main.append(h('div', {class: 'alert info', role: 'alert'},
      'Your password was reset by an administrator. Choose a new one to use the console.'));
    main.append(passwordForm(ctx));
    main.querySelector('input[name="current_password"]').focus();
    return;
  }
  if (session.enrolment) {
    main.append(h('div', {class: 'alert info', role: 'alert'},
      'Your role requires two-factor login. Set it up below to use the console.'));
  }
  main.append(section('Profile', h('dl', {class: 'facts'},
    h('dt', {}, 'Username'), h('dd', {}, me.username),
    h('dt', {}, 'Role'), h('dd', {}, me.role),
    h('dt', {}, 'Groups'), h('dd', {id: 'my-groups'}, me.groups && me.groups.length ? me.groups.join(', ') : 'none'),
    h('dt', {}, 'Two-factor login'), h('dd', {id: 'twofa-state'}, me.totp_enabled ? 'on' : 'off'),
    me.totp_enabled ? [h('dt', {}, 'Recovery codes left'), h('dd', {}, String(me.recovery_codes_left ?? '—'))] : null)));
  if (!me.totp_enabled) main.append(enrolment(ctx));
  else if (!session.enrolment) main.append(recoveryCodes());
  if (!session.enrolment) {
    main.append(passwordForm(ctx));
    main.append(await tokens(ctx, me));
  }
}

function svgDataUrl(svg) {
  const bytes = new TextEncoder().encode(svg);
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `data:image/svg+xml;base64,${btoa(binary)}`;
}

function secretOf(uri) {
  try {
    return new URL(uri).searchParams.get('secret') || '';
  } catch {
    return '';
  }
}

function enrolment(ctx) {
  const alert = alertBox();
  const area = h('div', {class: 'enrol'});
  const start = button('Set up two-factor login', async () => {
    setAlert(alert, '');
    let begun;
    try {
      begun = await busy(start, 'Preparing…', () => api.post('/api/v1/users/me/2fa'));
    } catch (error) {
      setAlert(alert, error.message);
      return;
    }
    start.hidden = true;
    const code = field({name: 'code', label: 'Code from your app', required: true, inputmode: 'numeric', autocomplete: 'one-time-code'});
    const confirm = h('button', {type: 'submit', class: 'primary'}, 'Turn on two-factor login');
    const form = h('form', {novalidate: true}, code, h('div', {class: 'actions'}, confirm));
    const key = secretOf(begun.otpauth_uri);
    area.append(
      h('p', {}, 'Scan this code with an authenticator app (or type the setup key), then enter the code it shows.'),
      h('img', {class: 'qr', id: 'totp-qr', alt: 'QR code for your authenticator app', src: svgDataUrl(begun.qr_svg), width: '220', height: '220'}),
      h('p', {}, 'Setup key: ', h('code', {id: 'totp-secret', class: 'secret-key'}, key)),
      form);
    code.input.focus();
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearErrors(form);
      const value = valueOf(code).trim().replace(/\s+/g, '');
      if (!value) {
        showError(form, inputError('code', "'code' is required"));
        return;
      }
      let done;
      try {
        done = await busy(confirm, 'Checking…', () => api.post('/api/v1/users/me/2fa/confirm', {code: value}));
      } catch (error) {
        showError(form, error.status >= 400 && error.status < 500 && error.status !== 429
          ? inputError('code', `'code' was not accepted: ${error.message}`) : error, alert);
        return;
      }
      area.replaceChildren(
        h('div', {class: 'alert success', role: 'status'}, 'Two-factor login is on.'),
        ...codeList(done.recovery_codes),
        h('div', {class: 'actions'}, button('I have stored them', () => ctx.refreshSession('queries'), {class: 'primary', id: 'codes-stored'})));
      area.querySelector('#codes-stored').focus();
    });
  }, {class: 'primary', id: 'enrol-start'});
  return section('Two-factor login', alert, area, start);
}

// The recovery codes shown once, with the button that says they are stored.
function codeList(codes) {
  return [
    h('p', {}, h('strong', {}, 'Recovery codes. '),
      'Each works once in place of a code, if you lose your authenticator. They are shown only now: store them somewhere safe.'),
    h('ol', {class: 'codes', id: 'recovery-codes'}, codes.map((c) => h('li', {}, h('code', {}, c)))),
  ];
}

// New recovery codes: the old ones stop working at once. Needs the password and a current code
// from the authenticator app (not a recovery code).
function recoveryCodes() {
  const alert = alertBox();
  const shown = h('div', {});
  const password = field({name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'current-password'});
  const code = field({name: 'code', label: 'Code from your authenticator app', required: true, inputmode: 'numeric', autocomplete: 'one-time-code'});
  const submit = h('button', {type: 'submit'}, 'Make new recovery codes');
  const form = h('form', {novalidate: true, id: 'recovery-form'}, alert, password, code, h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    shown.replaceChildren();
    const value = valueOf(code).trim().replace(/\s+/g, '');
    if (!valueOf(password)) {
      showError(form, inputError('password', "'password' is required"));
      return;
    }
    if (!value) {
      showError(form, inputError('code', "'code' is required"));
      return;
    }
    try {
      const made = await busy(submit, 'Making codes…', () => api.post('/api/v1/users/me/2fa/recovery-codes', {password: valueOf(password), code: value}));
      shown.replaceChildren(h('div', {class: 'alert success', role: 'status'}, 'New recovery codes are ready; the old ones no longer work.'), ...codeList(made.recovery_codes));
      shown.querySelector('#recovery-codes').setAttribute('tabindex', '-1');
      shown.querySelector('#recovery-codes').focus();
    } catch (error) {
      showError(form, error);
    } finally {
      password.input.value = '';
      code.input.value = '';
    }
  });
  return section('Recovery codes', h('p', {class: 'muted'}, 'Lost or used up your recovery codes? Make new ones: the old ones stop working at once.'), form, shown);
}

function passwordForm(ctx) {
  const alert = alertBox();
  const current = field({name: 'current_password', label: 'Current password', type: 'password', required: true, autocomplete: 'current-password'});
  const next = field({name: 'new_password', label: 'New password', type: 'password', required: true, autocomplete: 'new-password'});
  const again = field({name: 'again', label: 'New password again', type: 'password', required: true, autocomplete: 'new-password'});
  const submit = h('button', {type: 'submit'}, 'Change password');
  const form = h('form', {novalidate: true}, alert, current, next, again, h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (valueOf(next) !== valueOf(again)) {
      showError(form, inputError('again', "'again' does not match the new password"));
      return;
    }
    try {
      await busy(submit, 'Changing…', () => api.post('/api/v1/users/me/password',
        {current_password: valueOf(current), new_password: valueOf(next)}));
    } catch (error) {
      showError(form, error);
      return;
    } finally {
      for (const f of [current, next, again]) f.input.value = '';
    }
    await ctx.refreshSession();
  });
  return section('Password', h('p', {class: 'muted'}, 'Changing it ends all your sessions: you log in again.'), form);
}

async function tokens(ctx, me) {
  const alert = alertBox();
  const list = h('div', {});
  const reveal = h('div', {});
  const load = async () => {
    const data = await api.get('/api/v1/users/me/tokens');
    list.replaceChildren(tokenTable(data.tokens, async (token, btn) => {
      try {
        await busy(btn, 'Revoking…', () => api.del(`/api/v1/users/me/tokens/${api.enc(token.id)}`));
        await load();
      } catch (error) {
        setAlert(alert, error.message);
      }
    }));
  };
  const name = field({name: 'name', label: 'Name', required: true, help: 'What the token is for, e.g. "nightly export".'});
  // A token's role is at most its owner's: the server's roles up to mine (they come lowest first).
  const role = field({name: 'role', label: 'Role', type: 'select', value: me.role,
    options: ctx.roles.slice(0, ctx.roles.indexOf(me.role) + 1)});
  const days = field({name: 'expires_days', label: 'Expires after (days)', type: 'number', min: 1, step: 1, value: '90',
    help: 'Leave empty for a token that does not expire.'});
  const submit = h('button', {type: 'submit'}, 'Create token');
  const form = h('form', {novalidate: true, class: 'inline-form'}, alert, name, role, days, h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    reveal.replaceChildren();
    const body = {name: valueOf(name).trim(), role: valueOf(role)};
    if (valueOf(days)) body.expires_days = Number(valueOf(days));
    try {
      const made = await busy(submit, 'Creating…', () => api.post('/api/v1/users/me/tokens', body));
      const box = h('input', {type: 'text', readonly: true, value: made.token, id: 'new-token', 'aria-label': 'New token', class: 'mono'});
      reveal.append(h('div', {class: 'alert success', role: 'status'},
        h('p', {}, 'Your new token. It is shown only now: copy it somewhere safe.'), box,
        button('Copy', () => navigator.clipboard && navigator.clipboard.writeText(box.value))));
      name.input.value = '';
      await load();
    } catch (error) {
      showError(form, error);
    }
  });
  await load();
  return section('API tokens', h('p', {class: 'muted'}, 'For automation: send it as "Authorization: Bearer <token>".'), reveal, list, form);
}

export function tokenTable(tokens, onRevoke) {
  if (!tokens.length) return h('p', {class: 'muted'}, 'No tokens.');
  return table(['Name', 'Role', 'Created', 'Expires', 'Last used', 'State', ''], tokens.map((t) => [
    t.name, t.role, when(t.created_at), when(t.expires_at), when(t.last_used_at),
    t.active ? 'active' : (t.revoked_at ? 'revoked' : 'expired'),
    t.active ? (() => {
      const b = button('Revoke', () => onRevoke(t, b), {class: 'danger small', 'aria-label': `Revoke token ${t.name}`});
      return b;
    })() : '',
  ]), {label: 'API tokens'});
}

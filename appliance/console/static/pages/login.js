// The login page: username and password, then the TOTP (or recovery code) step when 2FA is on.

import * as api from '../api.js';
import {alertBox, busy, clearErrors, field, h, inputError, setAlert, showError, valueOf} from '../dom.js';

export function renderLogin({main, message, onLoggedIn}) {
  const alert = alertBox();
  const username = field({name: 'username', label: 'Username', required: true, autocomplete: 'username'});
  const password = field({name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'current-password'});
  const totp = field({
    name: 'totp', label: 'Authentication code', autocomplete: 'one-time-code', inputmode: 'numeric',
    help: 'The 6-digit code from your authenticator app, or one of your recovery codes.',
  });
  totp.hidden = true;
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Log in');
  const form = h('form', {class: 'login', novalidate: true, 'aria-labelledby': 'login-title'},
    h('h1', {id: 'login-title', tabindex: '-1'}, 'Log in'), alert, username, password, totp,
    h('div', {class: 'actions'}, submit));
  if (message) setAlert(alert, message, 'info');

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = {username: valueOf(username).trim(), password: valueOf(password)};
    if (!body.username || !body.password) {
      showError(form, !body.username ? inputError('username', "'username' is required") : inputError('password', "'password' is required"));
      return;
    }
    if (!totp.hidden) {
      const code = valueOf(totp).trim().replace(/\s+/g, '');
      if (!code) {
        showError(form, inputError('totp', "'totp' is required: enter the code from your authenticator app"));
        return;
      }
      body.totp = code;
    }
    try {
      await busy(submit, 'Logging in…', () => api.post('/api/v1/session', body));
    } catch (error) {
      if (error.code === 'totp_required') {
        totp.hidden = false;
        password.hidden = true;
        username.input.readOnly = true;
        submit.textContent = 'Verify';
        setAlert(alert, 'Two-factor login is on for this account: enter your authentication code.', 'info');
        totp.input.focus();
        return;
      }
      if (!totp.hidden && error.code === 'invalid_credentials') {
        showError(form, inputError('totp', "'totp' was not accepted: the code is wrong, expired or already used"));
        totp.input.select();
        return;
      }
      setAlert(alert, error.message, 'error');
      return;
    }
    password.input.value = '';
    totp.input.value = '';
    await onLoggedIn();
  });
  main.append(h('div', {class: 'login-wrap'}, form));
  username.input.focus();
}

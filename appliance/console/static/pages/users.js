// Users (admin): the list, roles, disable/enable, 2FA reset, each user's API tokens, new users.
// A role change and a 2FA reset are confirmed in a dialog first; every action's message replaces
// the last one (an old error never stays next to a later success).

import * as api from '../api.js';
import {alertBox, busy, button, clearErrors, confirmDialog, field, h, section, setAlert, showError, table, valueOf, when} from '../dom.js';
import {tokenTable} from './account.js';


export async function renderUsers(ctx) {
  const {main} = ctx;
  main.append(h('h1', {tabindex: '-1'}, 'Users'));
  const alert = alertBox();
  const list = h('div', {});
  const detail = h('div', {});
  const load = async () => {
    const data = await api.get('/api/v1/users');
    list.replaceChildren(table(['User', 'Role', 'Groups', 'Two-factor', 'State', 'Created', ''], data.users.map((user) => [
      user.username, roleSelect(ctx.roles, user, alert, load), groupsEditor(user, alert, load), user.totp_enabled ? 'on' : 'off',
      user.disabled ? 'disabled' : 'active', when(user.created_at), actions(user, alert, load, detail),
    ]), {label: 'Users', class: 'users'}));
  };
  main.append(section('All users', alert, list), detail, createForm(ctx.roles, load));
  await load();
}

// `roles`: the server's role names, lowest first (GET /api/v1/roles).
function roleSelect(roles, user, alert, reload) {
  const select = h('select', {'aria-label': `Role of ${user.username}`, name: 'role'},
    roles.map((r) => h('option', {value: r, selected: r === user.role}, r)));
  select.addEventListener('change', async () => {
    setAlert(alert, '');
    const confirmed = await confirmDialog({
      title: `Change the role of ${user.username}?`,
      text: `${user.username} becomes ${select.value} (now ${user.role}). Their sessions end: they log in again with the new role's rights.`,
      confirm: `Make ${user.username} ${select.value}`,
    });
    if (!confirmed) {
      select.value = user.role;
      setAlert(alert, `The role of ${user.username} was not changed.`, 'info');
      return;
    }
    try {
      await api.patch(`/api/v1/users/${api.enc(user.username)}`, {role: select.value});
      setAlert(alert, `${user.username} is now ${select.value} (their sessions were ended).`, 'success');
    } catch (error) {
      setAlert(alert, `${user.username}: ${error.message}`);
      select.value = user.role;
    }
    await reload();
  });
  return select;
}

// A user's groups: a viewer sees the queries for every viewer and those of their groups.
function groupsEditor(user, alert, reload) {
  const input = h('input', {type: 'text', name: 'groups', value: (user.groups || []).join(', '), size: 14,
    'aria-label': `Groups of ${user.username} (separated by commas)`, autocomplete: 'off', class: 'groups-input'});
  const save = button('Save', async () => {
    setAlert(alert, '');
    const groups = input.value.split(/[\s,]+/).filter(Boolean);
    try {
      const changed = await busy(save, 'Saving…', () => api.patch(`/api/v1/users/${api.enc(user.username)}`, {groups}));
      setAlert(alert, changed.groups.length ? `${user.username} is in: ${changed.groups.join(', ')}.`
        : `${user.username} is in no group.`, 'success');
    } catch (error) {
      setAlert(alert, `${user.username}: ${error.message}`);
      return;
    }
    await reload();
  }, {class: 'small', 'aria-label': `Save the groups of ${user.username}`});
  return h('span', {class: 'groups-edit'}, input, save);
}

function actions(user, alert, reload, detail) {
  const toggle = button(user.disabled ? 'Enable' : 'Disable', async () => {
    setAlert(alert, '');
    try {
      await busy(toggle, 'Saving…', () => api.patch(`/api/v1/users/${api.enc(user.username)}`, {disabled: !user.disabled}));
      setAlert(alert, `${user.username} is ${user.disabled ? 'enabled' : 'disabled'}.`, 'success');
      await reload();
    } catch (error) {
      setAlert(alert, `${user.username}: ${error.message}`);
    }
  }, {class: 'small', 'aria-label': `${user.disabled ? 'Enable' : 'Disable'} ${user.username}`});
  const reset = button('Reset 2FA', async () => {
    setAlert(alert, '');
    const confirmed = await confirmDialog({
      title: `Reset two-factor login of ${user.username}?`,
      text: `Their authenticator and recovery codes stop working and their sessions end. If their role requires two-factor login, they set it up again at their next login.`,
      confirm: 'Reset two-factor login', danger: true,
    });
    if (!confirmed) return;
    try {
      await busy(reset, 'Resetting…', () => api.post(`/api/v1/users/${api.enc(user.username)}/2fa/reset`));
      setAlert(alert, `Two-factor login of ${user.username} was reset.`, 'success');
      await reload();
    } catch (error) {
      setAlert(alert, `${user.username}: ${error.message}`);
    }
  }, {class: 'small', disabled: !user.totp_enabled, 'aria-label': `Reset two-factor login of ${user.username}`});
  const tokens = button('Tokens', () => showTokens(user, detail), {class: 'small', 'aria-label': `API tokens of ${user.username}`});
  return h('span', {class: 'row-actions'}, toggle, reset, tokens);
}

async function showTokens(user, detail) {
  const alert = alertBox();
  const holder = h('div', {});
  const load = async () => {
    const data = await api.get(`/api/v1/users/${api.enc(user.username)}/tokens`);
    holder.replaceChildren(tokenTable(data.tokens, async (token, btn) => {
      try {
        await busy(btn, 'Revoking…', () => api.del(`/api/v1/users/${api.enc(user.username)}/tokens/${api.enc(token.id)}`));
        await load();
      } catch (error) {
        setAlert(alert, error.message);
      }
    }));
  };
  detail.replaceChildren(section(`API tokens of ${user.username}`, alert, holder));
  try {
    await load();
  } catch (error) {
    setAlert(alert, error.message);
  }
  detail.querySelector('h2').setAttribute('tabindex', '-1');
  detail.querySelector('h2').focus();
}

function createForm(roles, reload) {
  const alert = alertBox();
  const username = field({name: 'username', label: 'Username', required: true});
  const role = field({name: 'role', label: 'Role', type: 'select', options: roles, value: roles[0]});  // the least
  const password = field({name: 'password', label: 'Initial password', type: 'password', required: true, autocomplete: 'new-password',
    help: 'Give it to the user out of band; they must choose their own at their first login.'});
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Add user');
  const form = h('form', {novalidate: true, id: 'new-user'}, alert, username, role, password, h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      const made = await busy(submit, 'Adding…', () => api.post('/api/v1/users',
        {username: valueOf(username).trim(), role: valueOf(role), password: valueOf(password)}));
      setAlert(alert, `Added ${made.username} (${made.role}).`, 'success');
      username.input.value = '';
      await reload();
    } catch (error) {
      showError(form, error);
    } finally {
      password.input.value = '';
    }
  });
  return section('Add a user', form);
}

// The console's entry: the session, the navigation for the caller's role, and the hash router.
// State lives in this module's scope (not on window); nothing goes to web storage or script-readable cookies.

import * as api from './api.js';
import {button, clear, h} from './dom.js';
import {renderLogin} from './pages/login.js';
import {renderAccount} from './pages/account.js';
import {renderAudit} from './pages/audit.js';
import {renderDatasources} from './pages/datasources.js';
import {renderEgress} from './pages/egress.js';
import {renderKeys} from './pages/keys.js';
import {renderQueries} from './pages/queries.js';
import {renderTls} from './pages/tls.js';
import {renderUsers} from './pages/users.js';

// Each page names the least role that may open it; the roles and their order come from the server
// (GET /api/v1/roles, lowest first: appliance/roles.py), which also decides what each may do.
const PAGES = [
  {path: 'queries', title: 'Queries', role: 'viewer', render: renderQueries},
  {path: 'datasources', title: 'Datasources', role: 'developer', render: renderDatasources},
  {path: 'tls', title: 'TLS', role: 'admin', render: renderTls},
  {path: 'egress', title: 'Egress', role: 'admin', render: renderEgress},
  {path: 'audit', title: 'Audit log', role: 'admin', render: renderAudit},
  {path: 'users', title: 'Users', role: 'admin', render: renderUsers},
  {path: 'keys', title: 'Keys', role: 'admin', render: renderKeys},
  {path: 'account', title: 'My account', role: 'viewer', render: renderAccount},
];

let session = null; // {username, role, enrolment, roles (every role's name, lowest first)}

const main = () => document.getElementById('main');

export function status(message) {
  document.getElementById('status').textContent = message || '';
}

// A message for the page the caller is about to open ("Saved query …", then navigate): the
// router shows it there, and clears the status line on any later navigation.
let flashed = '';

function flash(message) {
  flashed = message || '';
}

// As the server's `at_least`: a role the server did not name is never enough, nor ever needed.
function atLeast(role, needed) {
  const rank = (name) => session.roles.indexOf(name) + 1;
  return rank(needed) > 0 && rank(role) >= rank(needed);
}

function allowed(page) {
  return Boolean(session) && atLeast(session.role, page.role);
}

export function navigate(path) {
  if (location.hash === `#/${path}`) route();
  else location.hash = `#/${path}`;
}

function buildNav(current) {
  const nav = document.getElementById('nav');
  const toggle = document.getElementById('nav-toggle');
  const who = document.getElementById('who');
  clear(nav);
  clear(who);
  if (!session) {
    nav.hidden = true;
    toggle.hidden = true;
    return;
  }
  toggle.hidden = false;
  nav.hidden = false;
  const pages = session.enrolment || session.passwordChange ? PAGES.filter((p) => p.path === 'account') : PAGES.filter(allowed);
  nav.append(h('ul', {}, pages.map((page) => h('li', {},
    h('a', {href: `#/${page.path}`, 'aria-current': page.path === current ? 'page' : null}, page.title)))));
  who.append(h('span', {class: 'user'}, session.username), ' ', h('span', {class: 'badge'}, session.role),
    ' ', button('Log out', logout, {class: 'link', id: 'logout'}));
}

async function logout() {
  try {
    await api.del('/api/v1/session');
  } catch {
    // the session may already have ended; the login page is shown either way
  }
  signedOut('You are logged out.');
}

function signedOut(message) {
  session = null;
  buildNav(null);
  const view = h('div', {class: 'view'});
  clear(main()).append(view);
  renderLogin({main: view, message, onLoggedIn: loggedIn});
}

async function loggedIn() {
  await loadSession();
  navigate(session && (session.enrolment || session.passwordChange) ? 'account' : defaultPage());
}

function defaultPage() {
  return 'queries';
}

async function loadSession() {
  try {
    const [who, {roles}] = await Promise.all([api.get('/api/v1/session'), api.get('/api/v1/roles')]);
    session = {username: who.username, role: who.role, enrolment: Boolean(who['2fa_enrolment_required']),
      passwordChange: Boolean(who.password_change_required), roles};
  } catch {
    session = null;
  }
}

async function route() {
  if (!session) {
    signedOut();
    return;
  }
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  let page = PAGES.find((p) => p.path === parts[0]);
  if (session.enrolment || session.passwordChange) page = PAGES.find((p) => p.path === 'account');
  if (!page || !allowed(page)) {
    page = PAGES.find((p) => p.path === defaultPage());
    history.replaceState(null, '', `#/${page.path}`);
  }
  buildNav(page.path);
  document.title = `${page.title} · Appliance`;
  const view = h('div', {class: 'view', dataset: {page: page.path}});
  clear(main()).append(view);
  status(flashed);
  flashed = '';
  closeMenu();
  try {
    await page.render({
      main: view, session, roles: session.roles, args: parts.slice(1), navigate, status, flash,
      refreshSession: async (then) => {
        await loadSession();
        if (then && session) navigate(then);
        else route();
      },
      atLeast: (role) => atLeast(session.role, role),
    });
  } catch (error) {
    if (error && error.name === 'AbortError') return;
    view.append(h('div', {class: 'alert error', role: 'alert'}, error && error.message ? error.message : String(error)));
  }
  const heading = view.querySelector('h1');
  if (heading && document.activeElement === document.body) heading.focus({preventScroll: true});
}

function closeMenu() {
  document.getElementById('nav-toggle').setAttribute('aria-expanded', 'false');
  document.body.classList.remove('menu-open');
}

function setup() {
  const toggle = document.getElementById('nav-toggle');
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') !== 'true';
    toggle.setAttribute('aria-expanded', String(open));
    document.body.classList.toggle('menu-open', open);
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeMenu();
  });
  api.onUnauthenticated(() => {
    if (session) signedOut('Your session has ended: log in again.');
  });
  window.addEventListener('hashchange', route);
}

setup();
loadSession().then(route);

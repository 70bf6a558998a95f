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

// Each page names the route it reads; it opens for whoever may call that route. The least role of
// every route comes from the server (GET /api/v1/roles: the routes' own declarations in
// appliance/http/access.py), so the console names no role.
const PAGES = [
  {path: 'queries', title: 'Queries', reads: 'GET /api/v1/queries', render: renderQueries},
  {path: 'datasources', title: 'Datasources', reads: 'GET /api/v1/datasources', render: renderDatasources},
  {path: 'tls', title: 'TLS', reads: 'GET /api/v1/tls', render: renderTls},
  {path: 'egress', title: 'Egress', reads: 'GET /api/v1/egress', render: renderEgress},
  {path: 'audit', title: 'Audit log', reads: 'GET /api/v1/audit', render: renderAudit},
  {path: 'users', title: 'Users', reads: 'GET /api/v1/users', render: renderUsers},
  {path: 'keys', title: 'Keys', reads: 'GET /api/v1/keys', render: renderKeys},
  {path: 'account', title: 'My account', reads: 'GET /api/v1/users/me', render: renderAccount},
];

let session = null; // {username, role, enrolment, roles (every role's name, lowest first), routes}

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

// May this session call `route` ("METHOD /api/v1/path", as the server lists it)? A route the server
// did not list is never allowed.
function may(route) {
  return Boolean(session) && route in session.routes && atLeast(session.role, session.routes[route]);
}

function allowed(page) {
  return may(page.reads);
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
    const [who, {roles, routes}] = await Promise.all([api.get('/api/v1/session'), api.get('/api/v1/roles')]);
    session = {username: who.username, role: who.role, enrolment: Boolean(who['2fa_enrolment_required']),
      passwordChange: Boolean(who.password_change_required), roles, routes};
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
      may,
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

// The API client: same-origin fetch with the session cookie and the CSRF header the API requires
// on every state-changing request; errors become ApiError carrying the API's code and message, and
// the field, line and column the error is about when the API names them.

const CSRF_HEADER = 'X-Appliance-CSRF';
let unauthenticated = () => {};

// `where`: the API's error object; its field (a string) and line and column (positive integers)
// are kept, anything else is ignored.
export class ApiError extends Error {
  constructor(status, code, message, where) {
    super(message);
    this.status = status;
    this.code = code;
    const at = where || {};
    this.field = typeof at.field === 'string' ? at.field : null;
    this.line = Number.isInteger(at.line) && at.line > 0 ? at.line : null;
    this.column = this.line && Number.isInteger(at.column) && at.column > 0 ? at.column : null;
  }
}

// Called when the session has ended (401 on a call that needs one): the app shows the login.
export function onUnauthenticated(handler) {
  unauthenticated = handler;
}

function headersFor(method, body, accept) {
  const headers = {Accept: accept || 'application/json'};
  if (method !== 'GET' && method !== 'HEAD') headers[CSRF_HEADER] = '1';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return headers;
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = `the server answered ${response.status} ${response.statusText}`.trim();
  let where = null;
  try {
    const data = await response.json();
    if (data && data.error) {
      code = data.error.code || code;
      message = data.error.message || message;
      where = data.error;
    }
  } catch {
    // not JSON: keep the status line
  }
  const error = new ApiError(response.status, code, message, where);
  if (response.status === 401 && !['invalid_credentials', 'totp_required', 'throttled'].includes(code)) {
    unauthenticated(error);
  }
  return error;
}

async function send(method, path, body, options) {
  const opts = options || {};
  try {
    return await fetch(path, {
      method, headers: headersFor(method, body, opts.accept), credentials: 'same-origin',
      cache: 'no-store', redirect: 'error', signal: opts.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', 'the appliance could not be reached (network error)');
  }
}

export async function api(method, path, body, options) {
  const response = await send(method, path, body, options);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, options) => api('GET', path, undefined, options);
export const post = (path, body, options) => api('POST', path, body === undefined ? {} : body, options);
export const put = (path, body) => api('PUT', path, body);
export const patch = (path, body) => api('PATCH', path, body);
export const del = (path) => api('DELETE', path);

// POST and read an NDJSON answer line by line: onLine(object) for each line as it arrives.
export async function stream(path, body, onLine, options) {
  const response = await send('POST', path, body, {...(options || {}), accept: 'application/x-ndjson'});
  if (!response.ok) throw await failure(response);
  const type = response.headers.get('Content-Type') || '';
  if (!type.includes('ndjson')) {
    // The server chose a single JSON document: hand it over as one line.
    onLine(await response.json(), true);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, {stream: true});
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) onLine(JSON.parse(line), false);
      newline = buffered.indexOf('\n');
    }
  }
  buffered += decoder.decode();
  if (buffered.trim()) onLine(JSON.parse(buffered.trim()), false);
}

// POST and take the answer as a file: {blob, name} (the name from Content-Disposition, if any).
export async function download(path, body, accept) {
  const response = await send('POST', path, body, {accept});
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get('Content-Disposition') || '';
  const match = /filename="([^"]*)"/.exec(disposition);
  let blob;
  try {
    blob = await response.blob();
  } catch {
    // The server closes the connection mid-body when a run fails after its first bytes.
    throw new ApiError(0, 'incomplete', 'the download was cut short: the run failed while it was sent');
  }
  return {blob, name: match ? match[1] : null};
}

export function qs(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

export const enc = encodeURIComponent;

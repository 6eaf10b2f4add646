// The broker console: plain JavaScript over the broker's REST API, same origin only.
// Every value from the server is put into the page as text (textContent), never as HTML:
// certificate subjects and Common Names come from devices and may hold anything.
'use strict';

const state = { session: null, csrf: '', tenant: null, timer: null, auditPage: 1 };

class ApiFailure extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// Builds an element: h('td', {class: 'mono'}, 'text', child, ...).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function message(text, isError) {
  const m = $('message');
  m.textContent = text || '';
  m.className = isError ? 'error' : '';
}

function fmtTime(s) {
  if (!s) return '\u2014';
  return s.replace('T', ' ').replace(/\.\d+/, '').replace('Z', ' UTC');
}

function daysUntil(s) {
  return Math.floor((Date.parse(s) - Date.now()) / 86400000);
}

async function api(method, path, body, contentType) {
  const headers = { 'X-CSRF-Token': state.csrf };
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = contentType || 'application/json';
    payload = contentType ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', cache: 'no-store' });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (resp.status === 401 && path !== '/console/api/login') {
    showLogin('Your session has ended: log in again.');
    throw new ApiFailure(401, (data && data.message) || 'Session ended', data);
  }
  if (!resp.ok) throw new ApiFailure(resp.status, (data && data.message) || resp.statusText, data);
  return data;
}

// Runs an action and shows its outcome (or the server's message) in the status line.
async function act(fn, done) {
  try {
    await fn();
    if (done) message(done);
    await render();
  } catch (e) {
    if (!(e instanceof ApiFailure && e.status === 401)) message(e.message, true);
  }
}

function readFile(input, asText) {
  return new Promise((resolve, reject) => {
    const f = input.files && input.files[0];
    if (!f) { reject(new Error('Choose a file first.')); return; }
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error('The file could not be read.'));
    if (asText) r.readAsText(f); else r.readAsArrayBuffer(f);
  });
}

function table(headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('table', {}, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), h('tbody', {}, rows));
}

const T = () => enc(state.tenant);

// ---- Login and session ----

function showLogin(text) {
  stopTimer();
  state.session = null;
  state.csrf = '';
  state.tenant = null;
  state.auditPage = 1;
  $('app-view').hidden = true;
  $('who').hidden = true;
  $('login-view').hidden = false;
  message(text || '', !!text);
}

async function startSession(s) {
  state.session = s;
  state.csrf = s.csrfToken;
  if (!state.tenant || !s.management) state.tenant = s.tenant;
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = s.tenant + '/' + s.user;
  $('nav-tenants').hidden = !s.management;
  $('tenant-pick').hidden = !s.management;
  if (s.management) await loadTenantPicker();
  message('');
  if (!location.hash) location.hash = s.management ? '#tenants' : '#certificates';
  await render();
}

async function loadTenantPicker() {
  const list = await api('GET', '/tenant/tenants?pageSize=2000');
  const sel = $('tenant-select');
  sel.replaceChildren(...list.tenants.map((t) => h('option', { value: t.id, selected: t.id === state.tenant }, t.id)));
}

async function login(ev) {
  ev.preventDefault();
  try {
    const s = await api('POST', '/console/api/login', {
      tenant: $('login-tenant').value.trim(),
      user: $('login-user').value.trim(),
      password: $('login-password').value,
    });
    $('login-password').value = '';
    // A fresh login starts on the user's home page (not the previous user's).
    history.replaceState(null, '', s.management ? '#tenants' : '#certificates');
    await startSession(s);
  } catch (e) {
    message(e.message, true);
  }
}

async function logout() {
  try { await api('POST', '/console/api/logout'); } catch (_) { /* ended anyway */ }
  showLogin('Logged out.');
  message('Logged out.');
}

// ---- Pages ----

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function every(ms, fn) {
  stopTimer();
  state.timer = setInterval(() => { fn().catch((e) => message(e.message, true)); }, ms);
}

const pages = {
  certificates: pageCertificates,
  devices: pageDevices,
  crls: pageCrls,
  why: pageWhy,
  refusals: pageRefusals,
  expiring: pageExpiring,
  audit: pageAudit,
  tenants: pageTenants,
};

async function render() {
  if (!state.session) return;
  const name = (location.hash || '#certificates').slice(1);
  const page = pages[name] || pageCertificates;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#' + name);
  const out = $('page');
  try {
    const content = await page();
    out.replaceChildren(...[content].flat());
  } catch (e) {
    if (!(e instanceof ApiFailure && e.status === 401)) message(e.message, true);
  }
}

function navigate() {
  stopTimer();
  message('');
  render();
}

// Trusted certificates: status, expiry, chain length, devices using each; upload,
// enable/disable, delete, proof of possession.
async function pageCertificates() {
  const [certs, devices] = await Promise.all([
    api('GET', `/tenant/tenants/${T()}/trusted-certificates?pageSize=2000`),
    api('GET', `/tenant/tenants/${T()}/devices?pageSize=2000`),
  ]);
  const list = certs.trustedCertificates;
  const bySubject = new Map(list.map((c) => [c.subject, c]));
  // Certificates from this one up to a self-signed root, among the tenant's own.
  const chainLength = (c) => {
    let n = 1;
    const seen = new Set([c.fingerprint]);
    while (c.issuer !== c.subject && bySubject.has(c.issuer) && !seen.has(bySubject.get(c.issuer).fingerprint)) {
      c = bySubject.get(c.issuer);
      seen.add(c.fingerprint);
      n += 1;
    }
    return n + (c.issuer === c.subject ? ' (to its root)' : ' (issuer not uploaded)');
  };
  const using = (fp) => devices.devices.filter((d) => d.anchorFingerprint === fp).length;
  const rows = list.map((c) => {
    const days = daysUntil(c.notAfter);
    const enabled = c.status === 'ENABLED';
    return h('tr', { 'data-fingerprint': c.fingerprint },
      h('td', {}, c.name),
      h('td', { class: 'mono' }, c.subject),
      h('td', { class: 'status ' + (enabled ? 'ok' : 'bad') }, c.status),
      h('td', {}, fmtTime(c.notAfter), h('br'), h('span', { class: days < 0 ? 'bad' : days < 30 ? 'bad' : 'muted' }, days < 0 ? 'expired' : `in ${days} days`)),
      h('td', {}, chainLength(c)),
      h('td', { class: 'devices-using' }, String(using(c.fingerprint))),
      h('td', {}, c.autoRegistrationEnabled ? 'yes' : 'no'),
      h('td', {}, c.proofOfPossessionValid ? h('span', { class: 'ok' }, 'proven') : 'not proven'),
      h('td', { class: 'actions' },
        h('button', { class: 'secondary toggle-status', type: 'button', onclick: () => act(
          () => api('PUT', `/tenant/tenants/${T()}/trusted-certificates/${enc(c.fingerprint)}`, { status: enabled ? 'DISABLED' : 'ENABLED' }),
          `${c.name}: ${enabled ? 'disabled' : 'enabled'}.`) }, enabled ? 'Disable' : 'Enable'),
        h('button', { class: 'secondary', type: 'button', onclick: () => popPanel(c) }, 'Proof of possession'),
        h('button', { class: 'danger', type: 'button', onclick: () => {
          if (confirm(`Delete ${c.name}? Devices chaining to it will be refused.`)) {
            act(() => api('DELETE', `/tenant/tenants/${T()}/trusted-certificates/${enc(c.fingerprint)}`), `${c.name}: deleted.`);
          }
        } }, 'Delete')));
  });
  const file = h('input', { id: 'upload-file', type: 'file', accept: '.pem,.crt,.cer,application/x-pem-file', required: true });
  const name = h('input', { id: 'upload-name', maxlength: 255, placeholder: 'from the certificate' });
  const auto = h('input', { id: 'upload-auto', type: 'checkbox', checked: true });
  const form = h('form', { id: 'upload-form', onsubmit: (ev) => {
    ev.preventDefault();
    act(async () => {
      const pem = await readFile(file, true);
      const body = { certInPemFormat: pem, status: 'ENABLED', autoRegistrationEnabled: auto.checked };
      if (name.value.trim()) body.name = name.value.trim();
      await api('POST', `/tenant/tenants/${T()}/trusted-certificates`, body);
    }, 'Certificate uploaded.');
  } },
  h('label', {}, 'PEM file', file), h('label', {}, 'Name', name),
  h('label', { class: 'inline' }, auto, 'Register devices at first connection'),
  h('button', { id: 'upload-submit', type: 'submit' }, 'Upload'));
  return [h('h2', {}, 'Trusted certificates'),
    table(['Name', 'Subject', 'Status', 'Expires', 'Chain length', 'Devices', 'Auto-registration', 'Possession', ''], rows, 'No trusted certificates yet.'),
    h('div', { id: 'pop-panel' }),
    h('h3', {}, 'Upload a CA certificate'), form];
}

function popPanel(c) {
  const panel = $('pop-panel');
  const code = h('p', { class: 'mono' }, c.proofOfPossessionUnsignedVerificationCode || '');
  const signed = h('input', { id: 'pop-signed', size: 60, placeholder: 'base64 signature of the code' });
  panel.replaceChildren(
    h('h3', {}, `Proof of possession: ${c.name}`),
    h('p', {}, 'Get a verification code, sign it with the CA\'s private key (openssl dgst -sha256 -sign ca.key code.txt | base64 -w0), and paste the signature.'),
    h('button', { class: 'secondary', type: 'button', onclick: async () => {
      try {
        const r = await api('POST', `/tenant/tenants/${T()}/trusted-certificates-pop/${enc(c.fingerprint)}/verification-code`);
        code.textContent = r.proofOfPossessionUnsignedVerificationCode;
        message('Verification code issued.');
      } catch (e) { message(e.message, true); }
    } }, 'Get verification code'),
    code,
    h('form', { onsubmit: (ev) => {
      ev.preventDefault();
      act(() => api('POST', `/tenant/tenants/${T()}/trusted-certificates-pop/${enc(c.fingerprint)}/pop`,
        { proofOfPossessionSignedVerificationCode: signed.value.trim() }), 'Proof of possession accepted.');
    } }, h('label', {}, 'Signed code', signed), h('button', { type: 'submit' }, 'Verify')));
}

// Devices: registered, connected now, last seen, block/unblock.
async function pageDevices() {
  const draw = async () => {
    const [devices, live] = await Promise.all([
      api('GET', `/tenant/tenants/${T()}/devices?pageSize=2000`),
      api('GET', `/tenant/tenants/${T()}/connections`),
    ]);
    const online = new Map(live.connections.map((c) => [c.commonName, c]));
    const rows = devices.devices.map((d) => {
      const c = online.get(d.commonName);
      const blocked = d.status === 'BLOCKED';
      return h('tr', { 'data-cn': d.commonName },
        h('td', { class: 'mono' }, d.commonName),
        h('td', { class: blocked ? 'bad' : '' }, d.status),
        h('td', { class: 'connected ' + (c ? 'ok' : 'muted') }, c ? 'connected' : 'disconnected'),
        h('td', {}, c ? `${fmtTime(c.since)} from ${c.source}` : '\u2014'),
        h('td', {}, fmtTime(d.lastConnection)),
        h('td', {}, fmtTime(d.firstConnection)),
        h('td', { class: 'mono' }, d.anchorFingerprint || '\u2014'),
        h('td', { class: 'actions' }, h('button', { class: blocked ? 'secondary' : 'danger', type: 'button', onclick: () => act(
          () => api('PUT', `/tenant/tenants/${T()}/devices/${enc(d.commonName)}`, { status: blocked ? 'REGISTERED' : 'BLOCKED' }),
          `${d.commonName}: ${blocked ? 'unblocked' : 'blocked'}.`) }, blocked ? 'Unblock' : 'Block')));
    });
    const t = table(['Common Name', 'Status', 'Now', 'Since', 'Last seen', 'First connection', 'Trusted certificate', ''], rows, 'No devices registered yet.');
    t.id = 'devices-table';
    return t;
  };
  const holder = h('div', { id: 'devices-holder' }, await draw());
  every(1500, async () => {
    if (!document.body.contains(holder)) { stopTimer(); return; }
    holder.replaceChildren(await draw());
  });
  return [h('h2', {}, 'Devices'), h('p', { class: 'muted' }, 'Connections are those of the node serving this console; refreshed every few seconds.'), holder];
}

// CRLs: upload, and manual serial numbers.
async function pageCrls() {
  const list = await api('GET', `/tenant/tenants/${T()}/crls?pageSize=2000`);
  const rows = list.crls.map((c) => h('tr', {},
    h('td', { class: 'mono' }, c.issuer), h('td', {}, fmtTime(c.thisUpdate)), h('td', {}, fmtTime(c.nextUpdate)),
    h('td', {}, String(c.revokedCount)), h('td', {}, fmtTime(c.uploadedAt))));
  const file = h('input', { id: 'crl-file', type: 'file', accept: '.crl,.pem,.der', required: true });
  const upload = h('form', { onsubmit: (ev) => {
    ev.preventDefault();
    act(async () => {
      const bytes = await readFile(file, false);
      await api('POST', `/tenant/tenants/${T()}/crls`, bytes, 'application/pkix-crl');
    }, 'CRL uploaded.');
  } }, h('label', {}, 'CRL file (PEM or DER)', file), h('button', { type: 'submit' }, 'Upload'));
  const own = state.tenant === state.session.tenant;
  const serials = h('textarea', { id: 'serials', placeholder: 'One serial number per line, in hex (for example 1A:2B:3C or 1a2b3c)' });
  const result = h('div', {});
  const manual = own ? h('form', { class: 'column', onsubmit: (ev) => {
    ev.preventDefault();
    const crls = serials.value.split(/\s+/).filter(Boolean).map((s) => ({ serialNumberInHex: s }));
    act(async () => {
      const r = await api('PUT', '/tenant/trusted-certificates/settings/crl', { crls });
      serials.value = '';
      result.replaceChildren(h('p', {}, `Revoked by hand (${r.crls.length}): `, h('span', { class: 'mono' }, r.crls.map((e) => e.serialNumberInHex).join(', '))));
    }, 'Serial numbers revoked.');
  } }, h('label', {}, 'Serial numbers', serials), h('button', { type: 'submit' }, 'Revoke')) :
    h('p', { class: 'muted' }, 'Manual serial numbers apply to your own tenant: log in as this tenant\'s admin to add them.');
  return [h('h2', {}, 'Certificate revocation lists'),
    table(['Issuer', 'This update', 'Next update', 'Revoked', 'Uploaded'], rows, 'No CRLs uploaded.'),
    h('h3', {}, 'Upload a CRL'), upload,
    h('h3', {}, 'Revoke serial numbers by hand'), manual, result];
}

// "Why is this device refused?": the broker's own chain check on a pasted or uploaded
// chain, with its exact reason.
function pageWhy() {
  const pem = h('textarea', { id: 'why-chain', placeholder: '-----BEGIN CERTIFICATE-----\n(device certificate first, then its issuers)' });
  const file = h('input', { id: 'why-file', type: 'file', accept: '.pem,.crt,.cer' });
  const out = h('div', { id: 'why-result' });
  const form = h('form', { class: 'column', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const chain = file.files && file.files[0] ? await readFile(file, true) : pem.value;
      if (!chain.trim()) throw new Error('Paste a chain or choose a file first.');
      const r = await api('POST', '/tenant/trusted-certificates/verify-cert-chain', chain, 'application/x-pem-file');
      const pairs = [
        ['Verdict', h('span', { class: r.valid ? 'ok' : 'bad', id: 'why-verdict' }, r.valid ? 'Accepted' : 'Refused')],
        ['Reason', h('span', { id: 'why-reason' }, r.reason || '\u2014')],
        ['Reason code', h('span', { class: 'mono' }, r.reasonCode || '\u2014')],
        ['Tenant', r.tenant || r.tenantId || '\u2014'],
        ['Trusted certificate', h('span', { class: 'mono' }, r.anchorFingerprint || '\u2014')],
        ['Chain length', r.chainLength == null ? '\u2014' : String(r.chainLength)],
        ['Device certificate', h('span', { class: 'mono' }, r.certificate.subject)],
        ['Valid', `${fmtTime(r.certificate.notBefore)} to ${fmtTime(r.certificate.notAfter)}`],
        ['Fingerprint', h('span', { class: 'mono' }, r.certificate.fingerprint)],
      ];
      if (r.device) {
        pairs.push(['Device registry', `${r.device.status}; ${r.device.connectAllowed ? 'may connect' : 'may not connect: ' + (r.device.connectRefusal || '')}`]);
      }
      out.replaceChildren(h('dl', { class: 'verdict' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
      message('');
    } catch (e) {
      if (!(e instanceof ApiFailure && e.status === 401)) message(e.message, true);
    }
  } },
  h('label', {}, 'Chain (PEM, device certificate first)', pem),
  h('label', {}, 'or a file', file),
  h('button', { type: 'submit', id: 'why-submit' }, 'Check as the broker would'));
  return [h('h2', {}, 'Why is this device refused?'),
    h('p', { class: 'muted' }, 'Runs the broker\'s own chain check against the live trust store and shows its exact reason.'),
    form, out];
}

// Recent refusals of the tenant's devices, at the TLS handshake or at CONNECT (this node's memory).
async function pageRefusals() {
  const draw = async () => {
    const r = await api('GET', `/tenant/tenants/${T()}/refusals`);
    const rows = r.refusals.map((x) => h('tr', {},
      h('td', {}, fmtTime(x.lastTime)), h('td', {}, String(x.count)),
      h('td', { class: 'mono bad' }, x.reason), h('td', {}, x.detail),
      h('td', { class: 'mono' }, x.subject), h('td', { class: 'mono' }, x.fingerprint), h('td', { class: 'mono' }, x.source)));
    return table(['Last', 'Count', 'Reason', 'Detail', 'Subject', 'Fingerprint', 'Source'], rows, 'No refused connections recently.');
  };
  const holder = h('div', { id: 'refusals-holder' }, await draw());
  every(5000, async () => {
    if (!document.body.contains(holder)) { stopTimer(); return; }
    holder.replaceChildren(await draw());
  });
  return [h('h2', {}, 'Recent refusals'), h('p', { class: 'muted' }, 'The last refusals (TLS handshake or CONNECT) seen by the node serving this console, newest first.'), holder];
}

// Certificates expiring soon: the tenant's trusted certificates and the device
// certificates its CA issued over EST, soonest first.
async function pageExpiring() {
  const days = state.expiringDays || 30;
  const r = await api('GET', `/tenant/tenants/${T()}/expiring-certificates?days=${days}`);
  const rows = r.certificates.map((c) => h('tr', {},
    h('td', {}, c.kind === 'TRUSTED_CERTIFICATE' ? 'trusted certificate' : 'device certificate'),
    h('td', {}, c.name), h('td', { class: 'mono' }, c.serialNumber),
    h('td', {}, fmtTime(c.notAfter)),
    h('td', { class: c.daysLeft < 0 ? 'bad' : '' }, c.daysLeft < 0 ? `expired ${-c.daysLeft} days ago` : `${c.daysLeft} days`),
    h('td', {}, c.renewalDue ? 'renewal due' : '')));
  const pick = h('select', { id: 'expiring-days', onchange: (ev) => { state.expiringDays = Number(ev.target.value); render(); } },
    ...[7, 30, 90, 365].map((d) => h('option', { value: String(d), selected: d === days }, `${d} days`)));
  return [h('h2', {}, 'Expiring certificates'),
    h('label', {}, 'Within ', pick),
    table(['Kind', 'Name', 'Serial', 'Not after', 'Left', ''], rows, `Nothing expires within ${days} days.`)];
}

// The audit log.
async function pageAudit() {
  const size = 50;
  const scope = state.session.management ? `&tenant=${T()}` : '';
  const r = await api('GET', `/audit?pageSize=${size}&currentPage=${state.auditPage}${scope}`);
  const rows = r.auditRecords.map((a) => h('tr', {},
    h('td', {}, fmtTime(a.time)), h('td', {}, a.actor), h('td', { class: 'mono' }, a.action),
    h('td', {}, a.target || ''), h('td', { class: 'mono' }, a.fingerprint || ''), h('td', {}, a.detail || '')));
  const s = r.statistics;
  const pager = h('div', { class: 'pager' },
    h('button', { class: 'secondary', type: 'button', disabled: s.currentPage <= 1, onclick: () => { state.auditPage -= 1; render(); } }, 'Newer'),
    h('span', {}, `Page ${s.currentPage} of ${Math.max(1, s.totalPages)}`),
    h('button', { class: 'secondary', type: 'button', disabled: s.currentPage >= s.totalPages, onclick: () => { state.auditPage += 1; render(); } }, 'Older'));
  return [h('h2', {}, 'Audit log'), table(['Time', 'Actor', 'Action', 'Target', 'Fingerprint', 'Detail'], rows, 'Nothing recorded.'), pager];
}

// Tenants and their limits (management admin).
async function pageTenants() {
  if (!state.session.management) return h('p', {}, 'Only the management tenant sees every tenant.');
  const r = await api('GET', '/tenant/tenants?pageSize=2000');
  const rows = r.tenants.map((t) => {
    const s = t.settings;
    return h('tr', { 'data-tenant': t.id },
      h('td', { class: 'mono' }, t.id), h('td', {}, t.company), h('td', {}, t.status),
      h('td', {}, String(s.maxDevices)), h('td', {}, String(s.maxAnchors)), h('td', {}, String(s.maxPublishRate)),
      h('td', {}, String(s.maxChainLength)), h('td', {}, s.clientIdPolicy),
      h('td', {}, [s.crlOfflineEnabled ? 'uploaded' : null, s.crlOnlineEnabled ? 'online' : null].filter(Boolean).join(', ') || 'off'),
      h('td', {}, fmtTime(t.creationTime)),
      h('td', { class: 'actions' }, h('button', { class: 'secondary', type: 'button', onclick: () => selectTenant(t.id) }, 'Open')));
  });
  return [h('h2', {}, 'Tenants'),
    h('p', { class: 'muted' }, 'A limit of 0 means unlimited.'),
    table(['Id', 'Company', 'Status', 'Max devices', 'Max certificates', 'Max publish rate', 'Max chain length', 'ClientId policy', 'CRL checks', 'Created', ''], rows, 'No tenants.')];
}

function selectTenant(id) {
  state.tenant = id;
  state.auditPage = 1;
  $('tenant-select').value = id;
  location.hash = '#certificates';
  navigate();
}

// ---- Start ----

async function boot() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('tenant-select').addEventListener('change', (ev) => { state.tenant = ev.target.value; state.auditPage = 1; navigate(); });
  window.addEventListener('hashchange', navigate);
  try {
    await startSession(await api('GET', '/console/api/session'));
  } catch (_) {
    showLogin('');
  }
}

document.addEventListener('DOMContentLoaded', boot);

// The emulator's own behaviour over raw HTTP, where the SDK would hide or never
// trigger it: start-up output, the 401 challenge, error bodies and codes,
// input encodings, token endpoints and expiry, fault injection, the request
// log, persistence across restarts, and the admin API.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { createIdentity, imdsToken, OUTPUT_KEYS, startEmulator, vaultRequest } from './helpers.mjs';

const API = 'api-version=7.4';
const B64URL = /^[A-Za-z0-9_-]+$/;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let emu;
let admin; // identity with every permission
let pg; // get, wrapKey, unwrapKey
let adminToken;
let pgToken;

before(async () => {
  emu = await startEmulator();
  admin = await createIdentity(emu, 'kv-admin', ['all']);
  pg = await createIdentity(emu, 'pg-server', ['get', 'wrapKey', 'unwrapKey']);
  adminToken = await imdsToken(emu.urls.token_url, admin.client_id);
  pgToken = await imdsToken(emu.urls.token_url, pg.client_id);
});

after(async () => {
  await emu.stop();
});

async function createKey(name, body = {}) {
  const res = await emu.vault('POST', `/keys/${name}/create?${API}`, { token: adminToken, body: { kty: 'RSA', ...body } });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

const wrap = (kid, value, token = pgToken, alg = 'RSA-OAEP-256') => emu.vault('POST',
  `${new URL(kid).pathname}/wrapkey?${API}`, { token, body: { alg, value } });
const unwrap = (kid, value, token = pgToken, alg = 'RSA-OAEP-256') => emu.vault('POST',
  `${new URL(kid).pathname}/unwrapkey?${API}`, { token, body: { alg, value } });

function assertError(res, status, code, innerCode) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.error.code, code, JSON.stringify(res.body));
  if (innerCode) assert.equal(res.body.error.innererror.code, innerCode, JSON.stringify(res.body));
}

describe('start-up', () => {
  test('prints exactly the documented lines, then ready', () => {
    assert.deepEqual(emu.lines.map((l) => l.split('=')[0]), [...OUTPUT_KEYS, 'ready']);
    assert.match(emu.urls.vault_url, /^https:\/\/localhost:\d+$/);
    const identity = new URL(emu.urls.token_url);
    assert.equal(identity.hostname, '127.0.0.1');
    assert.equal(emu.urls.token_url, `${identity.origin}/metadata/identity/oauth2/token`);
    assert.equal(emu.urls.app_service_url, `${identity.origin}/msi/token`);
    assert.equal(emu.urls.admin_url, `${identity.origin}/_admin`);
    assert.ok(path.isAbsolute(emu.urls.ca_file));
    assert.match(readFileSync(emu.urls.ca_file, 'utf8'), /BEGIN CERTIFICATE/);
  });

  test('the server certificate covers localhost and 127.0.0.1', async () => {
    const viaIp = await vaultRequest(emu.urls.vault_url.replace('localhost', '127.0.0.1'), emu.ca, 'GET', `/keys?${API}`);
    assert.equal(viaIp.status, 401);
  });
});

describe('vault: authentication comes first', () => {
  test('no token: 401 with the challenge, even for a bad body, path and api-version', async () => {
    const res = await emu.vault('POST', '/keys/nope//wrapkey', { body: '{not json' });
    assertError(res, 401, 'Unauthorized');
    assert.equal(res.body.error.message, 'AKV10000: Request is missing a Bearer or PoP token.');
    assert.equal(res.headers['www-authenticate'],
      'Bearer authorization="https://login.windows.net/7e1a0000-c0de-4e5b-9a11-000000000001", resource="https://vault.azure.net"');
  });

  test('an unknown token is refused with 401 and the challenge', async () => {
    const res = await emu.vault('GET', `/keys?${API}`, { token: 'not-a-token' });
    assertError(res, 401, 'Unauthorized');
    assert.ok(res.headers['www-authenticate'].startsWith('Bearer authorization='));
  });

  test('the api-version is required, may be percent-encoded, and must be known', async () => {
    assertError(await emu.vault('GET', '/keys', { token: adminToken }), 400, 'BadParameter');
    assertError(await emu.vault('GET', '/keys?api-version=7.9', { token: adminToken }), 400, 'BadParameter');
    for (const version of ['7.4', '7.5', '7.6', '2025-07-01']) {
      assert.equal((await emu.vault('GET', `/keys?api%2Dversion=${version}`, { token: adminToken })).status, 200, version);
    }
  });
});

describe('vault: keys', () => {
  test('kid is the full versioned id; trailing slash and empty version mean latest', async () => {
    const created = await createKey('Kek-Case', { key_size: 2048, key_ops: ['wrapKey', 'unwrapKey'], tags: { a: 'b' } });
    assert.match(created.key.kid, new RegExp(`^${emu.urls.vault_url}/keys/Kek-Case/[0-9a-f]{32}$`));
    assert.deepEqual(created.key.key_ops, ['wrapKey', 'unwrapKey']);
    assert.equal(created.key.e, 'AQAB');
    assert.match(created.key.n, B64URL);
    assert.equal(created.key.d, undefined);
    assert.deepEqual(created.tags, { a: 'b' });
    for (const route of ['/keys/Kek-Case', '/keys/Kek-Case/', '/keys/kek-case']) {
      const got = await emu.vault('GET', `${route}?${API}`, { token: pgToken });
      assert.equal(got.status, 200, route);
      assert.equal(got.body.key.kid, created.key.kid, route);
    }
  });

  test('creating over an existing name adds a version', async () => {
    const first = await createKey('kek-versions');
    const second = await createKey('kek-versions', { key_size: 2048 });
    assert.notEqual(first.key.kid, second.key.kid);
    const latest = await emu.vault('GET', `/keys/kek-versions/?${API}`, { token: pgToken });
    assert.equal(latest.body.key.kid, second.key.kid);
    const old = await emu.vault('GET', `${new URL(first.key.kid).pathname}?${API}`, { token: pgToken });
    assert.equal(Buffer.from(old.body.key.n, 'base64url').length, 256);
  });

  test('version lists page with maxresults and nextLink', async () => {
    for (let i = 0; i < 3; i += 1) await createKey('kek-paged');
    const page1 = await emu.vault('GET', `/keys/kek-paged/versions?${API}&maxresults=2`, { token: adminToken });
    assert.equal(page1.status, 200);
    assert.equal(page1.body.value.length, 2);
    assert.ok(page1.body.nextLink.startsWith(`${emu.urls.vault_url}/keys/kek-paged/versions?`));
    const next = new URL(page1.body.nextLink);
    const page2 = await emu.vault('GET', `${next.pathname}${next.search}`, { token: adminToken });
    assert.equal(page2.body.value.length, 1);
    assert.equal(page2.body.nextLink, null);
    const kids = [...page1.body.value, ...page2.body.value].map((item) => item.kid);
    assert.equal(new Set(kids).size, 3);
    assertError(await emu.vault('GET', `/keys/kek-paged/versions?${API}&maxresults=26`, { token: adminToken }),
      400, 'BadParameter');
  });

  test('invalid create bodies are 400 BadParameter', async () => {
    const bad = [
      { kty: 'EC' },
      { kty: 'RSA', key_size: 1024 },
      { kty: 'RSA', key_ops: ['fly'] },
      { kty: 'RSA', attributes: { exp: 'tomorrow' } },
    ];
    for (const body of bad) {
      assertError(await emu.vault('POST', `/keys/kek-bad/create?${API}`, { token: adminToken, body }), 400, 'BadParameter');
    }
    assertError(await emu.vault('POST', `/keys/bad_name/create?${API}`, { token: adminToken, body: { kty: 'RSA' } }),
      400, 'BadParameter');
  });

  test('unknown keys and versions are 404 KeyNotFound', async () => {
    assertError(await emu.vault('GET', `/keys/missing?${API}`, { token: pgToken }), 404, 'KeyNotFound');
    await createKey('kek-404');
    assertError(await emu.vault('GET', `/keys/kek-404/${'0'.repeat(32)}?${API}`, { token: pgToken }), 404, 'KeyNotFound');
    assertError(await wrap(`${emu.urls.vault_url}/keys/missing/${'0'.repeat(32)}`, 'AAAA'), 404, 'KeyNotFound');
  });

  test('soft delete: 409 on re-create, purge 403 under purge protection, 204 without it', async () => {
    await createKey('kek-purge');
    const deleted = await emu.vault('DELETE', `/keys/kek-purge?${API}`, { token: adminToken });
    assert.equal(deleted.status, 200);
    assert.equal(deleted.body.recoveryId, `${emu.urls.vault_url}/deletedkeys/kek-purge`);
    assert.equal(deleted.body.scheduledPurgeDate - deleted.body.deletedDate, 90 * 86400);
    assert.equal(deleted.body.attributes.recoveryLevel, 'Recoverable');
    assertError(await emu.vault('POST', `/keys/kek-purge/create?${API}`, { token: adminToken, body: { kty: 'RSA' } }),
      409, 'Conflict', 'ObjectIsDeletedButRecoverable');
    assertError(await emu.vault('DELETE', `/deletedkeys/kek-purge?${API}`, { token: adminToken }), 403, 'Forbidden');

    assert.equal((await emu.admin('PATCH', '/config', { purge_protection: false })).status, 200);
    try {
      const listed = await emu.vault('GET', `/deletedkeys?${API}`, { token: adminToken });
      const item = listed.body.value.find((i) => i.kid.endsWith('/keys/kek-purge'));
      assert.equal(item.attributes.recoveryLevel, 'Recoverable+Purgeable');
      const purged = await emu.vault('DELETE', `/deletedkeys/kek-purge?${API}`, { token: adminToken });
      assert.equal(purged.status, 204);
      assert.equal(purged.text, '');
      assertError(await emu.vault('GET', `/deletedkeys/kek-purge?${API}`, { token: adminToken }), 404, 'KeyNotFound');
    } finally {
      await emu.admin('PATCH', '/config', { purge_protection: true });
    }
  });
});

describe('vault: wrap and unwrap', () => {
  let kek;
  before(async () => {
    kek = await createKey('kek-crypto', { key_size: 2048 });
  });

  test('output is unpadded base64url; input may be base64url, padded, or standard base64', async () => {
    const dek = crypto.randomBytes(32);
    const wrapped = await wrap(kek.key.kid, dek.toString('base64url'));
    assert.equal(wrapped.status, 200);
    assert.equal(wrapped.body.kid, kek.key.kid);
    assert.match(wrapped.body.value, B64URL);
    assert.equal(Buffer.from(wrapped.body.value, 'base64url').length, 256);

    // Encrypt locally with the public key; the service must accept every spelling.
    const publicKey = crypto.createPublicKey({ key: { kty: 'RSA', n: kek.key.n, e: kek.key.e }, format: 'jwk' });
    for (const [alg, oaepHash] of [['RSA-OAEP-256', 'sha256'], ['RSA-OAEP', 'sha1']]) {
      const ciphertext = crypto.publicEncrypt(
        { key: publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, dek);
      for (const value of [ciphertext.toString('base64url'), ciphertext.toString('base64'),
        `${ciphertext.toString('base64url')}==`.slice(0, Math.ceil(ciphertext.length / 3) * 4)]) {
        const res = await unwrap(kek.key.kid, value, pgToken, alg);
        assert.equal(res.status, 200, `${alg} ${value}`);
        assert.equal(res.body.value, dek.toString('base64url'));
      }
    }
  });

  test('bad alg, bad value and malformed JSON are 400 BadParameter', async () => {
    const path = `${new URL(kek.key.kid).pathname}/wrapkey?${API}`;
    assertError(await emu.vault('POST', path, { token: pgToken, body: '{"alg":' }), 400, 'BadParameter');
    assertError(await emu.vault('POST', path, { token: pgToken, body: '[]' }), 400, 'BadParameter');
    assertError(await wrap(kek.key.kid, 'AAAA', pgToken, 'RSA1_5'), 400, 'BadParameter');
    assertError(await wrap(kek.key.kid, 'AAAA', pgToken, 'A256KW'), 400, 'BadParameter');
    assertError(await wrap(kek.key.kid, 'not base64!'), 400, 'BadParameter');
    assertError(await wrap(kek.key.kid, ''), 400, 'BadParameter');
    assertError(await wrap(kek.key.kid, Buffer.alloc(191).toString('base64url')), 400, 'BadParameter');
    assertError(await unwrap(kek.key.kid, Buffer.alloc(256, 1).toString('base64url')), 400, 'BadParameter');
    assertError(await unwrap(kek.key.kid, Buffer.alloc(32).toString('base64url')), 400, 'BadParameter');
  });

  test('encrypt/decrypt need their own permissions and key_ops', async () => {
    const encrypted = await emu.vault('POST', `${new URL(kek.key.kid).pathname}/encrypt?${API}`,
      { token: adminToken, body: { alg: 'RSA-OAEP-256', value: 'aGVsbG8' } });
    assert.equal(encrypted.status, 200);
    const decrypted = await emu.vault('POST', `${new URL(kek.key.kid).pathname}/decrypt?${API}`,
      { token: adminToken, body: { alg: 'RSA-OAEP-256', value: encrypted.body.value } });
    assert.equal(decrypted.body.value, 'aGVsbG8');
    const denied = await emu.vault('POST', `${new URL(kek.key.kid).pathname}/decrypt?${API}`,
      { token: pgToken, body: { alg: 'RSA-OAEP-256', value: encrypted.body.value } });
    assertError(denied, 403, 'Forbidden', 'AccessDenied');
    assert.match(denied.body.error.message,
      new RegExp(`appid=${pg.client_id};oid=${pg.object_id};.*does not have keys decrypt permission`));

    const wrapOnly = await createKey('kek-wraponly', { key_ops: ['wrapKey'] });
    assertError(await emu.vault('POST', `${new URL(wrapOnly.key.kid).pathname}/unwrapkey?${API}`,
      { token: pgToken, body: { alg: 'RSA-OAEP-256', value: 'AAAA' } }), 403, 'Forbidden', 'KeyOperationForbidden');
  });

  test('disabled: every crypto operation and GET are 403 KeyDisabled', async () => {
    const key = await createKey('kek-off');
    const wrapped = await wrap(key.key.kid, 'AAECAw');
    await emu.admin('POST', '/keys/kek-off/disable');
    assertError(await wrap(key.key.kid, 'AAECAw'), 403, 'Forbidden', 'KeyDisabled');
    assertError(await unwrap(key.key.kid, wrapped.body.value), 403, 'Forbidden', 'KeyDisabled');
    assertError(await emu.vault('GET', `/keys/kek-off?${API}`, { token: pgToken }), 403, 'Forbidden', 'KeyDisabled');
    await emu.admin('POST', '/keys/kek-off/enable');
    assert.equal((await unwrap(key.key.kid, wrapped.body.value)).status, 200);
  });

  test('outside nbf/exp: wrap and encrypt are refused, unwrap still works', async () => {
    const now = Math.floor(Date.now() / 1000);
    const future = await createKey('kek-future', { attributes: { nbf: now + 3600 } });
    assertError(await wrap(future.key.kid, 'AAECAw'), 403, 'Forbidden', 'KeyNotYetValid');

    const key = await createKey('kek-expired');
    const wrapped = await wrap(key.key.kid, 'AAECAw');
    const patched = await emu.vault('PATCH', `${new URL(key.key.kid).pathname}?${API}`,
      { token: adminToken, body: { attributes: { exp: now - 10 } } });
    assert.equal(patched.body.attributes.exp, now - 10);
    assertError(await wrap(key.key.kid, 'AAECAw'), 403, 'Forbidden', 'KeyExpired');
    assertError(await emu.vault('POST', `${new URL(key.key.kid).pathname}/encrypt?${API}`,
      { token: adminToken, body: { alg: 'RSA-OAEP-256', value: 'AAECAw' } }), 403, 'Forbidden', 'KeyExpired');
    const unwrapped = await unwrap(key.key.kid, wrapped.body.value);
    assert.equal(unwrapped.body.value, 'AAECAw');
  });

  test('RBAC mode: denials are ForbiddenByRbac naming the data action', async () => {
    await emu.admin('PATCH', '/config', { permission_model: 'rbac' });
    try {
      const res = await emu.vault('POST', `${new URL(kek.key.kid).pathname}/decrypt?${API}`,
        { token: pgToken, body: { alg: 'RSA-OAEP-256', value: 'AAAA' } });
      assertError(res, 403, 'Forbidden', 'ForbiddenByRbac');
      assert.match(res.body.error.message, /Action: 'Microsoft\.KeyVault\/vaults\/keys\/decrypt\/action'/);
    } finally {
      await emu.admin('PATCH', '/config', { permission_model: 'access_policy' });
    }
  });
});

describe('token endpoints', () => {
  const resource = encodeURIComponent('https://vault.azure.net');
  const imds = (query, headers = { Metadata: 'true' }) => fetch(`${emu.urls.token_url}?${query}`, { headers });

  test('IMDS: a token with string fields, selectable by client_id, object_id or msi_res_id', async () => {
    for (const selector of [`client_id=${pg.client_id}`, `object_id=${pg.object_id}`,
      `msi_res_id=${encodeURIComponent(pg.resource_id)}`]) {
      const res = await fetch(`${emu.urls.token_url}/?api-version=2018-02-01&resource=${resource}&${selector}`,
        { headers: { Metadata: 'true' } });
      assert.equal(res.status, 200, selector);
      const body = await res.json();
      for (const field of ['access_token', 'refresh_token', 'expires_in', 'expires_on', 'not_before', 'resource',
        'token_type', 'client_id']) {
        assert.equal(typeof body[field], 'string', field);
      }
      assert.equal(body.refresh_token, '');
      assert.equal(body.token_type, 'Bearer');
      assert.equal(body.resource, 'https://vault.azure.net');
      assert.equal(body.client_id, pg.client_id);
      assert.equal(body.expires_in, '3600');
      assert.equal(Number(body.expires_on) - Number(body.not_before), 3600);
    }
  });

  test('IMDS errors: missing Metadata, unknown identity, wrong resource, ambiguous selection', async () => {
    const noHeader = await imds(`api-version=2018-02-01&resource=${resource}&client_id=${pg.client_id}`, {});
    assert.equal(noHeader.status, 400);
    assert.equal((await noHeader.json()).error, 'bad_request_102');

    const unknown = await imds(`api-version=2018-02-01&resource=${resource}&client_id=${crypto.randomUUID()}`);
    assert.equal(unknown.status, 400);
    assert.deepEqual(await unknown.json(), { error: 'invalid_request', error_description: 'Identity not found' });

    const wrongResource = await imds(`api-version=2018-02-01&resource=${encodeURIComponent('https://management.azure.com/')}&client_id=${pg.client_id}`);
    assert.equal(wrongResource.status, 400);
    assert.equal((await wrongResource.json()).error, 'invalid_resource');

    const noSelector = await imds(`api-version=2018-02-01&resource=${resource}`);
    assert.equal(noSelector.status, 400);
    assert.equal((await noSelector.json()).error, 'invalid_request');

    const noVersion = await imds(`resource=${resource}&client_id=${pg.client_id}`);
    assert.equal(noVersion.status, 400);
  });

  test('App Service: needs X-IDENTITY-HEADER; principal_id selects by object id', async () => {
    const { identity_header: secret } = (await emu.admin('GET', '/config')).body;
    const url = `${emu.urls.app_service_url}?api-version=2019-08-01&resource=${resource}&principal_id=${pg.object_id}`;
    const denied = await fetch(url);
    assert.equal(denied.status, 401);
    const ok = await fetch(url, { headers: { 'X-IDENTITY-HEADER': secret } });
    assert.equal(ok.status, 200);
    const body = await ok.json();
    assert.equal(body.client_id, pg.client_id);
    assert.equal(body.token_type, 'Bearer');
    assert.match(body.expires_on, /^\d+$/);
    const vault = await emu.vault('GET', `/keys?${API}`, { token: body.access_token });
    assert.equal(vault.status, 403); // pg-server has no 'list' permission: authenticated but denied

    const unknown = await fetch(url.replace(pg.object_id, crypto.randomUUID()), { headers: { 'X-IDENTITY-HEADER': secret } });
    assert.equal(unknown.status, 400);
    assert.match((await unknown.json()).message, /No Managed Identity found/);
  });

  test('tokens expire after token_ttl, and can be expired at once', async () => {
    assert.equal((await emu.admin('PATCH', '/config', { token_ttl: 1 })).status, 200);
    let shortLived;
    try {
      shortLived = await imdsToken(emu.urls.token_url, pg.client_id);
    } finally {
      await emu.admin('PATCH', '/config', { token_ttl: 3600 });
    }
    await sleep(1100);
    const expired = await emu.vault('GET', `/keys/kek-crypto?${API}`, { token: shortLived });
    assertError(expired, 401, 'Unauthorized');
    assert.ok(expired.headers['www-authenticate']);

    const fresh = await imdsToken(emu.urls.token_url, pg.client_id);
    assert.equal((await emu.vault('GET', `/keys/kek-crypto?${API}`, { token: fresh })).status, 200);
    const result = await emu.admin('POST', '/tokens/expire', { identity: 'pg-server' });
    assert.ok(result.body.expired >= 1);
    assertError(await emu.vault('GET', `/keys/kek-crypto?${API}`, { token: fresh }), 401, 'Unauthorized');
    pgToken = await imdsToken(emu.urls.token_url, pg.client_id);
    // The admin identity's token was left alone.
    assert.equal((await emu.vault('GET', `/keys/kek-crypto?${API}`, { token: adminToken })).status, 200);
  });
});

describe('fault injection', () => {
  test('N times 5xx, then normal service', async () => {
    await createKey('kek-faults');
    const added = await emu.admin('POST', '/faults',
      { target: 'vault', path: '^/keys/kek-faults', action: 'status', status: 503, times: 2 });
    assert.equal(added.body.remaining, 2);
    for (let i = 0; i < 2; i += 1) {
      assertError(await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken }), 503, 'ServiceUnavailable');
    }
    assert.equal((await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken })).status, 200);
    assert.deepEqual((await emu.admin('GET', '/faults')).body.faults, []);
  });

  test('429 carries Retry-After; the method filter and path regex select requests', async () => {
    await emu.admin('POST', '/faults',
      { target: 'vault', method: 'POST', path: '/unwrapkey$', action: 'status', status: 429, retry_after: 3, times: 1 });
    assert.equal((await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken })).status, 200);
    const kid = (await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken })).body.key.kid;
    assert.equal((await wrap(kid, 'AAECAw')).status, 200);
    const throttled = await unwrap(kid, 'AAECAw');
    assertError(throttled, 429, 'Throttled');
    assert.equal(throttled.headers['retry-after'], '3');
  });

  test('latency, dropped connections and malformed bodies', async () => {
    await emu.admin('POST', '/faults', { target: 'vault', action: 'latency', latency_ms: 300, times: 1 });
    const started = Date.now();
    assert.equal((await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken })).status, 200);
    assert.ok(Date.now() - started >= 290);

    await emu.admin('POST', '/faults', { target: 'vault', action: 'drop', times: 1 });
    const mark = (await emu.admin('GET', '/requests')).body.last_seq;
    await assert.rejects(emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken }), /socket hang up|ECONNRESET/);
    const [dropped] = (await emu.admin('GET', `/requests?since=${mark}`)).body.requests;
    assert.equal(dropped.fault, 'drop');
    assert.equal(dropped.status, null);

    await emu.admin('POST', '/faults', { target: 'vault', action: 'malformed', times: 1 });
    const malformed = await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken });
    assert.equal(malformed.status, 200);
    assert.throws(() => JSON.parse(malformed.text));
  });

  test('token endpoint faults are separate from vault faults', async () => {
    await emu.admin('POST', '/faults', { target: 'token', action: 'status', status: 500, times: 1 });
    assert.equal((await emu.vault('GET', `/keys/kek-faults?${API}`, { token: pgToken })).status, 200);
    await assert.rejects(imdsToken(emu.urls.token_url, pg.client_id), /500/);
    await imdsToken(emu.urls.token_url, pg.client_id);

    const unlimited = await emu.admin('POST', '/faults', { target: 'token', path: '^/msi/', action: 'status', status: 404 });
    assert.equal((await emu.admin('GET', '/faults')).body.faults.length, 1);
    assert.equal((await emu.admin('DELETE', `/faults/${unlimited.body.id}`)).status, 204);
    assert.deepEqual((await emu.admin('GET', '/faults')).body.faults, []);
  });

  test('invalid fault specifications are rejected', async () => {
    for (const spec of [{ target: 'dns', action: 'drop' }, { target: 'vault', action: 'status' },
      { target: 'vault', action: 'latency' }, { target: 'vault', action: 'drop', path: '(' }]) {
      assert.equal((await emu.admin('POST', '/faults', spec)).status, 400, JSON.stringify(spec));
    }
  });
});

describe('request log', () => {
  test('records method, path, query, status and identity, and never a token, secret or key value', async () => {
    await emu.admin('DELETE', '/requests');
    const token = await imdsToken(emu.urls.token_url, pg.client_id);
    const kid = (await emu.vault('GET', `/keys/kek-crypto?${API}`, { token })).body.key.kid;
    const dek = crypto.randomBytes(32).toString('base64url');
    const wrapped = await wrap(kid, dek, token);
    await unwrap(kid, wrapped.body.value, token);
    const { identity_header: secret } = (await emu.admin('GET', '/config')).body;
    await fetch(`${emu.urls.app_service_url}?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net&client_id=${pg.client_id}`,
      { headers: { 'X-IDENTITY-HEADER': secret } });

    const { requests } = (await emu.admin('GET', '/requests')).body;
    assert.deepEqual(requests.map((r) => [r.server, r.method, r.status, r.identity]), [
      ['token', 'GET', 200, 'pg-server'],
      ['vault', 'GET', 200, 'pg-server'],
      ['vault', 'POST', 200, 'pg-server'],
      ['vault', 'POST', 200, 'pg-server'],
      ['token', 'GET', 200, 'pg-server'],
    ]);
    assert.equal(requests[2].path, `${new URL(kid).pathname}/wrapkey`);
    assert.deepEqual(requests[2].query, { 'api-version': '7.4' });
    const text = JSON.stringify(requests);
    for (const secretValue of [token, adminToken, dek, wrapped.body.value, secret]) {
      assert.ok(!text.includes(secretValue), 'the log leaks a secret value');
    }
    const stateFile = readFileSync(path.join(emu.stateDir, 'state.json'), 'utf8');
    assert.ok(!stateFile.includes(token), 'the state file holds a usable token');
  });

  test('since= returns only later entries; DELETE clears', async () => {
    const mark = (await emu.admin('GET', '/requests')).body.last_seq;
    await emu.vault('GET', `/keys?${API}`);
    const later = (await emu.admin('GET', `/requests?since=${mark}`)).body.requests;
    assert.deepEqual(later.map((r) => r.status), [401]);
    assert.equal((await emu.admin('DELETE', '/requests')).status, 204);
    assert.deepEqual((await emu.admin('GET', '/requests')).body.requests, []);
  });
});

describe('admin API', () => {
  test('key shortcuts: create, disable one version, rotate, delete, recover, purge', async () => {
    const created = await emu.admin('POST', '/keys/admin-kek', { key_size: 2048, tags: { t: '1' } });
    assert.equal(created.status, 200);
    const rotated = await emu.admin('POST', '/keys/admin-kek/rotate');
    assert.notEqual(rotated.body.key.kid, created.body.key.kid);
    const firstVersion = created.body.key.kid.split('/').pop();
    const disabled = await emu.admin('POST', '/keys/admin-kek/disable', { version: firstVersion });
    assert.deepEqual(disabled.body.versions.map((v) => v.attributes.enabled), [false, true]);
    const patched = await emu.admin('PATCH', `/keys/admin-kek/${firstVersion}`, { attributes: { enabled: true } });
    assert.equal(patched.body.attributes.enabled, true);

    assert.equal((await emu.admin('POST', '/keys/admin-kek/delete')).status, 200);
    assert.equal((await emu.admin('GET', '/keys/admin-kek')).body.deleted, true);
    assert.equal((await emu.admin('POST', '/keys/admin-kek/recover')).status, 200);
    assert.equal((await emu.admin('GET', '/keys/admin-kek')).body.deleted, false);
    await emu.admin('POST', '/keys/admin-kek/delete');
    // The admin purge ignores purge protection so that tests can clean up.
    assert.equal((await emu.admin('POST', '/keys/admin-kek/purge')).status, 204);
    assertError(await emu.admin('GET', '/keys/admin-kek'), 404, 'KeyNotFound');
    assert.ok((await emu.admin('GET', '/keys')).body.keys.every((k) => k.name !== 'admin-kek'));
  });

  test('identities: create with fixed ids, conflicts, permission replace, delete', async () => {
    const clientId = crypto.randomUUID();
    const made = await emu.admin('POST', '/identities', { name: 'fixed-id', client_id: clientId, permissions: ['Get', 'WRAPKEY'] });
    assert.equal(made.body.client_id, clientId);
    assert.deepEqual(made.body.permissions, ['get', 'wrapKey']);
    assertError(await emu.admin('POST', '/identities', { name: 'fixed-id' }), 409, 'Conflict');
    assertError(await emu.admin('POST', '/identities', { name: 'bad', permissions: ['fly'] }), 400, 'BadParameter');
    const replaced = await emu.admin('PUT', '/identities/fixed-id/permissions', { permissions: ['unwrapKey'] });
    assert.deepEqual(replaced.body.permissions, ['unwrapKey']);
    const token = await imdsToken(emu.urls.token_url, clientId);
    assert.equal((await emu.admin('DELETE', '/identities/fixed-id')).status, 204);
    // A token outlives its identity, but the identity no longer has any permission.
    assertError(await emu.vault('GET', `/keys/kek-crypto?${API}`, { token }), 403, 'Forbidden', 'AccessDenied');
  });

  test('unknown routes are 404, wrong methods 405, bad JSON and bad settings 400', async () => {
    assert.equal((await emu.admin('GET', '/nothing')).status, 404);
    assert.equal((await emu.admin('DELETE', '/config')).status, 405);
    const badJson = await fetch(`${emu.urls.admin_url}/identities`, { method: 'POST', body: '{' });
    assert.equal(badJson.status, 400);
    assertError(await emu.admin('PATCH', '/config', { token_ttl: 0 }), 400, 'BadParameter');
    assertError(await emu.admin('PATCH', '/config', { color: 'blue' }), 400, 'BadParameter');
  });
});

describe('persistence', () => {
  test('a restart keeps keys, identities, tokens, settings and the CA', async () => {
    const first = await startEmulator({ args: ['--token-ttl', '600'] });
    try {
      const identity = await createIdentity(first, 'persisted', ['all']);
      const token = await imdsToken(first.urls.token_url, identity.client_id);
      const created = await first.vault('POST', `/keys/kek-persist/create?${API}`, { token, body: { kty: 'RSA' } });
      const wrapped = await first.vault('POST', `${new URL(created.body.key.kid).pathname}/wrapkey?${API}`,
        { token, body: { alg: 'RSA-OAEP-256', value: 'c2VjcmV0' } });
      await first.stop({ keepState: true });

      const second = await startEmulator({ stateDir: first.stateDir });
      try {
        assert.deepEqual(second.ca, first.ca);
        assert.equal((await second.admin('GET', '/config')).body.token_ttl, 600);
        const kidPath = new URL(created.body.key.kid).pathname;
        const unwrapped = await second.vault('POST', `${kidPath}/unwrapkey?${API}`,
          { token, body: { alg: 'RSA-OAEP-256', value: wrapped.body.value } });
        assert.equal(unwrapped.status, 200, JSON.stringify(unwrapped.body));
        assert.equal(unwrapped.body.value, 'c2VjcmV0');
        assert.equal(new URL(unwrapped.body.kid).pathname, kidPath);
      } finally {
        await second.stop();
      }
    } finally {
      await first.stop();
    }
  });

  test('--identities creates identities at start; --no-purge-protection changes recoveryLevel', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kv-ids-'));
    const file = path.join(dir, 'identities.json');
    const clientId = crypto.randomUUID();
    writeFileSync(file, JSON.stringify([{ name: 'from-file', client_id: clientId, permissions: ['all'] }]));
    const other = await startEmulator({ args: ['--identities', file, '--no-purge-protection', '--recoverable-days', '7'] });
    try {
      const token = await imdsToken(other.urls.token_url, clientId);
      const created = await other.vault('POST', `/keys/k/create?${API}`, { token, body: { kty: 'RSA' } });
      assert.equal(created.body.attributes.recoveryLevel, 'CustomizedRecoverable+Purgeable');
      assert.equal(created.body.attributes.recoverableDays, 7);
    } finally {
      await other.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

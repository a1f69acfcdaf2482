// Conformance: the official @azure/keyvault-keys + @azure/identity packages
// against the emulator, with ManagedIdentityCredential going through the
// IMDS-style endpoint (AZURE_POD_IDENTITY_AUTHORITY_HOST). If the SDK accepts
// every exchange, the emulator speaks the protocol the way the service does.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ManagedIdentityCredential } from '@azure/identity';
import { CryptographyClient, KeyClient } from '@azure/keyvault-keys';

import { createIdentity, startEmulator } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const HEX32 = /^[0-9a-f]{32}$/;
const POLL = { intervalInMs: 50 };

let emu;
let adminCredential; // an identity with every permission
let adminKeys;
let pgIdentity; // the identity a PostgreSQL server would run as: get, wrapKey, unwrapKey
let pgCredential;
let clientOptions;

async function rejectsWith(promise, statusCode, code) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.name, 'RestError', err.stack);
    assert.equal(err.statusCode, statusCode, err.message);
    if (code) assert.equal(err.code, code, err.message);
    return true;
  });
}

before(async () => {
  emu = await startEmulator();
  // Must be set before the credentials are built: it points the SDK's IMDS
  // client at the emulator (the SDK then requests .../oauth2/token/).
  process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = new URL(emu.urls.token_url).origin;
  const admin = await createIdentity(emu, 'kv-admin', ['all']);
  pgIdentity = await createIdentity(emu, 'pg-server', ['get', 'wrapKey', 'unwrapKey']);
  // The CA is trusted through a custom agent here; a child process below
  // covers NODE_EXTRA_CA_CERTS. The challenge names vault.azure.net, which
  // localhost does not end with, hence disableChallengeResourceVerification.
  clientOptions = {
    agent: new https.Agent({ ca: emu.ca }),
    disableChallengeResourceVerification: true,
  };
  adminCredential = new ManagedIdentityCredential({ clientId: admin.client_id });
  adminKeys = new KeyClient(emu.urls.vault_url, adminCredential, clientOptions);
  // Select the PostgreSQL identity by ARM resource id (msi_res_id) to cover that selector too.
  pgCredential = new ManagedIdentityCredential({ resourceId: pgIdentity.resource_id });
});

after(async () => {
  await emu.stop();
});

const cryptoFor = (keyId) => new CryptographyClient(keyId, pgCredential, clientOptions);

describe('KeyClient and CryptographyClient against the emulator (IMDS credential)', () => {
  test('create, get latest and get by version', async () => {
    const created = await adminKeys.createRsaKey('kek-basic', { keySize: 2048, tags: { purpose: 'cmk' } });
    const kid = new URL(created.id);
    assert.equal(kid.origin, emu.urls.vault_url);
    const [, keys, name, version] = kid.pathname.split('/');
    assert.deepEqual([keys, name], ['keys', 'kek-basic']);
    assert.match(version, HEX32);
    assert.equal(created.keyType, 'RSA');
    assert.equal(created.properties.recoveryLevel, 'Recoverable');
    assert.equal(created.properties.recoverableDays, 90);
    assert.deepEqual(created.properties.tags, { purpose: 'cmk' });
    assert.equal(Buffer.from(created.key.n).length, 256);

    const latest = await adminKeys.getKey('kek-basic');
    assert.equal(latest.id, created.id);
    const versioned = await adminKeys.getKey('kek-basic', { version });
    assert.equal(versioned.id, created.id);
  });

  test('creating a key of 3072 and 4096 bits, and RSA-HSM', async () => {
    const big = await adminKeys.createRsaKey('kek-4096', { keySize: 4096 });
    assert.equal(Buffer.from(big.key.n).length, 512);
    const mid = await adminKeys.createRsaKey('kek-3072', { keySize: 3072, hsm: true });
    assert.equal(mid.keyType, 'RSA-HSM');
    assert.equal(Buffer.from(mid.key.n).length, 384);
  });

  test('wrapKey/unwrapKey round trip with RSA-OAEP-256 and RSA-OAEP', async () => {
    const key = await adminKeys.createRsaKey('kek-wrap', { keySize: 2048 });
    const client = cryptoFor(key.id);
    const dek = crypto.randomBytes(32);

    const wrapped = await client.wrapKey('RSA-OAEP-256', dek);
    assert.equal(wrapped.keyID, key.id);
    assert.equal(wrapped.result.length, 256);
    const unwrapped = await client.unwrapKey('RSA-OAEP-256', wrapped.result);
    assert.deepEqual(Buffer.from(unwrapped.result), dek);

    // The SDK wraps RSA-OAEP locally with the public key it fetched, so this
    // checks the emulator's SHA-1 OAEP against an independent implementation.
    const wrappedSha1 = await client.wrapKey('RSA-OAEP', dek);
    const unwrappedSha1 = await client.unwrapKey('RSA-OAEP', wrappedSha1.result);
    assert.deepEqual(Buffer.from(unwrappedSha1.result), dek);
  });

  test('encrypt/decrypt with RSA-OAEP-256', async () => {
    const key = await adminKeys.createRsaKey('kek-encrypt', { keySize: 2048 });
    // pg-server has no encrypt/decrypt permission; the admin identity does.
    const admin = new CryptographyClient(key.id, adminCredential, clientOptions);
    const plaintext = Buffer.from('cluster data key');
    const encrypted = await admin.encrypt({ algorithm: 'RSA-OAEP-256', plaintext });
    const decrypted = await admin.decrypt({ algorithm: 'RSA-OAEP-256', ciphertext: encrypted.result });
    assert.equal(Buffer.from(decrypted.result).toString(), 'cluster data key');
  });

  test('a versionless key id unwraps with the latest version', async () => {
    const key = await adminKeys.createRsaKey('kek-versionless', { keySize: 2048 });
    const versioned = cryptoFor(key.id);
    const wrapped = await versioned.wrapKey('RSA-OAEP-256', Buffer.alloc(32, 7));
    const versionless = cryptoFor(`${emu.urls.vault_url}/keys/kek-versionless`);
    const unwrapped = await versionless.unwrapKey('RSA-OAEP-256', wrapped.result);
    assert.deepEqual(Buffer.from(unwrapped.result), Buffer.alloc(32, 7));
    assert.equal(unwrapped.keyID, key.id);
  });

  test('disable blocks unwrap with 403, enable restores it', async () => {
    const key = await adminKeys.createRsaKey('kek-disable', { keySize: 2048 });
    const client = cryptoFor(key.id);
    const wrapped = await client.wrapKey('RSA-OAEP-256', Buffer.alloc(32, 1));

    const disabled = await adminKeys.updateKeyProperties('kek-disable', key.properties.version, { enabled: false });
    assert.equal(disabled.properties.enabled, false);
    await rejectsWith(cryptoFor(key.id).unwrapKey('RSA-OAEP-256', wrapped.result), 403, 'Forbidden');
    await rejectsWith(adminKeys.getKey('kek-disable'), 403, 'Forbidden');

    await adminKeys.updateKeyProperties('kek-disable', key.properties.version, { enabled: true });
    const unwrapped = await cryptoFor(key.id).unwrapKey('RSA-OAEP-256', wrapped.result);
    assert.deepEqual(Buffer.from(unwrapped.result), Buffer.alloc(32, 1));
  });

  test('an expired key refuses wrap (403 from the service) but still unwraps', async () => {
    const key = await adminKeys.createRsaKey('kek-expiry', { keySize: 2048 });
    const wrapped = await cryptoFor(key.id).wrapKey('RSA-OAEP-256', Buffer.alloc(32, 2));
    const expired = await adminKeys.updateKeyProperties('kek-expiry', key.properties.version,
      { expiresOn: new Date(Date.now() - 60_000) });
    assert.ok(expired.properties.expiresOn < new Date());

    // A client that may read the key refuses an expired one by itself, so the
    // service's refusal is checked with an identity lacking 'get': the SDK
    // then sends every operation to the service.
    const blind = await createIdentity(emu, 'no-get', ['wrapKey', 'unwrapKey']);
    const remoteOnly = new CryptographyClient(key.id, new ManagedIdentityCredential({ objectId: blind.object_id }),
      clientOptions);
    const mark = (await emu.admin('GET', '/requests')).body.last_seq;
    await rejectsWith(remoteOnly.wrapKey('RSA-OAEP-256', Buffer.alloc(32, 2)), 403, 'Forbidden');
    const wrapRequests = (await emu.admin('GET', `/requests?since=${mark}`)).body.requests
      .filter((r) => r.path.endsWith('/wrapkey') && r.identity === 'no-get');
    assert.deepEqual(wrapRequests.map((r) => r.status), [403]);

    const unwrapped = await remoteOnly.unwrapKey('RSA-OAEP-256', wrapped.result);
    assert.deepEqual(Buffer.from(unwrapped.result), Buffer.alloc(32, 2));
  });

  test('rotate creates a new version; old versions keep unwrapping; versions page through nextLink', async () => {
    const first = await adminKeys.createRsaKey('kek-rotate', { keySize: 2048, keyOps: ['wrapKey', 'unwrapKey'] });
    const wrappedByFirst = await cryptoFor(first.id).wrapKey('RSA-OAEP-256', Buffer.alloc(32, 3));
    const second = await adminKeys.rotateKey('kek-rotate');
    assert.notEqual(second.properties.version, first.properties.version);
    assert.deepEqual(second.keyOperations, ['wrapKey', 'unwrapKey']);
    const third = await adminKeys.rotateKey('kek-rotate');
    assert.equal((await adminKeys.getKey('kek-rotate')).id, third.id);

    const old = await cryptoFor(first.id).unwrapKey('RSA-OAEP-256', wrappedByFirst.result);
    assert.deepEqual(Buffer.from(old.result), Buffer.alloc(32, 3));

    const pages = [];
    for await (const page of adminKeys.listPropertiesOfKeyVersions('kek-rotate').byPage({ maxPageSize: 2 })) {
      pages.push(page.map((p) => p.version));
    }
    assert.equal(pages.length, 2);
    assert.deepEqual(pages.flat().sort(),
      [first, second, third].map((k) => k.properties.version).sort());

    const names = [];
    for await (const props of adminKeys.listPropertiesOfKeys()) names.push(props.name);
    assert.ok(names.includes('kek-rotate'));
  });

  test('delete, get deleted, conflict on re-create, purge refused, recover', async () => {
    const key = await adminKeys.createRsaKey('kek-delete', { keySize: 2048 });
    const poller = await adminKeys.beginDeleteKey('kek-delete', POLL);
    const deleted = await poller.pollUntilDone();
    assert.equal(deleted.name, 'kek-delete');
    assert.equal(deleted.properties.recoveryId, `${emu.urls.vault_url}/deletedkeys/kek-delete`);
    assert.ok(deleted.properties.scheduledPurgeDate > deleted.properties.deletedOn);

    const fetched = await adminKeys.getDeletedKey('kek-delete');
    assert.equal(fetched.id, key.id);
    await rejectsWith(adminKeys.getKey('kek-delete'), 404, 'KeyNotFound');
    await rejectsWith(adminKeys.createRsaKey('kek-delete'), 409, 'Conflict');
    await rejectsWith(adminKeys.purgeDeletedKey('kek-delete'), 403, 'Forbidden');

    const listed = [];
    for await (const item of adminKeys.listDeletedKeys()) listed.push(item.name);
    assert.ok(listed.includes('kek-delete'));

    const recoverPoller = await adminKeys.beginRecoverDeletedKey('kek-delete', POLL);
    const recovered = await recoverPoller.pollUntilDone();
    assert.equal(recovered.id, key.id);
    assert.equal((await adminKeys.getKey('kek-delete')).id, key.id);
  });

  test('revoking unwrapKey through the admin API gives 403; granting it back restores access', async () => {
    const key = await adminKeys.createRsaKey('kek-revoke', { keySize: 2048 });
    const wrapped = await cryptoFor(key.id).wrapKey('RSA-OAEP-256', Buffer.alloc(32, 4));

    const revoked = await emu.admin('POST', '/identities/pg-server/revoke', { permissions: ['unwrapKey'] });
    assert.equal(revoked.status, 200);
    await rejectsWith(cryptoFor(key.id).unwrapKey('RSA-OAEP-256', wrapped.result), 403, 'Forbidden');

    await emu.admin('POST', '/identities/pg-server/grant', { permissions: ['unwrapKey'] });
    const unwrapped = await cryptoFor(key.id).unwrapKey('RSA-OAEP-256', wrapped.result);
    assert.deepEqual(Buffer.from(unwrapped.result), Buffer.alloc(32, 4));
  });

  test('the PostgreSQL identity cannot create keys', async () => {
    const pgKeys = new KeyClient(emu.urls.vault_url, pgCredential, clientOptions);
    await rejectsWith(pgKeys.createRsaKey('not-allowed'), 403, 'Forbidden');
  });

  test('throttling: the SDK honours Retry-After and succeeds on the third try', async () => {
    await adminKeys.createRsaKey('kek-throttle', { keySize: 2048 });
    const mark = (await emu.admin('GET', '/requests')).body.last_seq;
    const fault = await emu.admin('POST', '/faults',
      { target: 'vault', method: 'GET', path: '^/keys/kek-throttle', action: 'status', status: 429, retry_after: 1, times: 2 });
    assert.equal(fault.status, 200);
    const started = Date.now();
    const key = await adminKeys.getKey('kek-throttle');
    assert.equal(key.name, 'kek-throttle');
    assert.ok(Date.now() - started >= 2000, 'two Retry-After: 1 waits');
    const statuses = (await emu.admin('GET', `/requests?since=${mark}`)).body.requests.map((r) => r.status);
    assert.deepEqual(statuses, [429, 429, 200]);
  });

  test('NODE_EXTRA_CA_CERTS alone is enough to trust the emulator (child process)', async () => {
    await adminKeys.createRsaKey('kek-ca', { keySize: 2048 });
    const script = `
      import { ManagedIdentityCredential } from '@azure/identity';
      import { KeyClient } from '@azure/keyvault-keys';
      const client = new KeyClient(process.env.VAULT_URL,
        new ManagedIdentityCredential({ clientId: process.env.CLIENT_ID }),
        { disableChallengeResourceVerification: true });
      const key = await client.getKey('kek-ca');
      process.stdout.write(key.id);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: here,
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: emu.urls.ca_file,
        VAULT_URL: emu.urls.vault_url,
        CLIENT_ID: pgIdentity.client_id,
      },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    assert.equal(code, 0, err);
    assert.match(out, new RegExp(`^${emu.urls.vault_url}/keys/kek-ca/[0-9a-f]{32}$`));
  });
});

// Conformance: ManagedIdentityCredential through the App Service-style endpoint
// (IDENTITY_ENDPOINT + IDENTITY_HEADER). A file of its own because msal-node
// detects the managed-identity source once per process, and node --test runs
// each file in a separate process.

import assert from 'node:assert/strict';
import https from 'node:https';
import { after, before, test } from 'node:test';

import { ManagedIdentityCredential } from '@azure/identity';
import { CryptographyClient, KeyClient } from '@azure/keyvault-keys';

import { createIdentity, startEmulator } from './helpers.mjs';

let emu;
let options;

before(async () => {
  emu = await startEmulator({ args: ['--identity-header', 'conformance-secret'] });
  process.env.IDENTITY_ENDPOINT = emu.urls.app_service_url;
  process.env.IDENTITY_HEADER = 'conformance-secret';
  options = { agent: new https.Agent({ ca: emu.ca }), disableChallengeResourceVerification: true };
});

after(async () => {
  await emu.stop();
});

test('App Service credential: create, wrap, unwrap; every token comes from /msi/token', async () => {
  const admin = await createIdentity(emu, 'kv-admin', ['all']);
  const pg = await createIdentity(emu, 'pg-server', ['get', 'wrapKey', 'unwrapKey']);
  const keys = new KeyClient(emu.urls.vault_url, new ManagedIdentityCredential({ clientId: admin.client_id }), options);
  const key = await keys.createRsaKey('kek-appservice', { keySize: 2048 });

  // Selected by ARM resource id, which App Service spells mi_res_id.
  const client = new CryptographyClient(key.id, new ManagedIdentityCredential({ resourceId: pg.resource_id }), options);
  const wrapped = await client.wrapKey('RSA-OAEP-256', Buffer.alloc(32, 9));
  const unwrapped = await client.unwrapKey('RSA-OAEP-256', wrapped.result);
  assert.deepEqual(Buffer.from(unwrapped.result), Buffer.alloc(32, 9));

  const tokenRequests = (await emu.admin('GET', '/requests')).body.requests.filter((r) => r.server === 'token');
  assert.ok(tokenRequests.length >= 2);
  for (const r of tokenRequests) {
    assert.equal(r.path, '/msi/token');
    assert.equal(r.status, 200);
    assert.equal(r.query['api-version'], '2019-08-01');
  }
  assert.ok(tokenRequests.some((r) => r.query.mi_res_id === pg.resource_id && r.identity === 'pg-server'));
});

test('App Service credential: an unknown client id fails to authenticate', async () => {
  const keys = new KeyClient(emu.urls.vault_url,
    new ManagedIdentityCredential({ clientId: '11111111-2222-3333-4444-555555555555' }), options);
  await assert.rejects(keys.getKey('kek-appservice'), /No Managed Identity found/);
});

#!/usr/bin/env node
'use strict';
// Local Azure Key Vault (keys) + managed-identity emulator for cmk_storage's
// tests. Node core modules only; the openssl CLI makes the TLS certificates.
//
//   node emulator/kv-emulator.js --port <vault-https-port> [--identity-port <http-port>] --state-dir <dir>
//
// Prints vault_url, token_url, app_service_url, admin_url and ca_file lines,
// then "ready", and serves until SIGINT/SIGTERM. See emulator/README.md.

const fs = require('node:fs');
const path = require('node:path');
const http = require('node:http');
const https = require('node:https');
const { parseArgs } = require('node:util');

const { StateStore } = require('./lib/state');
const { initConfig } = require('./lib/config');
const { ensureCertificates } = require('./lib/certs');
const { Identities } = require('./lib/identity');
const { KeyVault } = require('./lib/keys');
const { Faults } = require('./lib/faults');
const { RequestLog } = require('./lib/request-log');
const { createVaultHandler } = require('./lib/vault-api');
const { createTokenHandler } = require('./lib/token-api');
const { createAdminHandler } = require('./lib/admin');
const { parseTarget, sendJson } = require('./lib/http');

const HOST = '127.0.0.1';

const USAGE = `usage: node kv-emulator.js --port <vault-https-port> --state-dir <dir> [options]

  --port N                 HTTPS port of the vault (0 = any free port)
  --identity-port N        HTTP port of the token endpoints and /_admin
                           (default: --port + 1, or any free port when --port is 0)
  --state-dir DIR          where keys, identities, settings and the CA persist
  --hostname NAME          host name in vault_url and every kid (default localhost)
  --identities FILE        JSON array of {name, client_id?, object_id?, resource_id?,
                           permissions?} to create (or, by name, update) at start
  --token-ttl SECONDS      lifetime of issued tokens (default 3600)
  --identity-header SECRET App Service X-IDENTITY-HEADER secret (default: random,
                           kept in the state; GET /_admin/config shows it)
  --tenant-id GUID         tenant named in the 401 challenge
  --no-purge-protection    allow purging deleted keys (recoveryLevel Recoverable+Purgeable)
  --recoverable-days N     soft-delete retention, 7-90 (default 90)
  --permission-model M     access_policy (default) or rbac: the shape of 403 denials
  --verbose                print each request-log entry to stderr
  --help`;

// Models throw HttpError with a Key Vault-shaped body; show its message.
const errorMessage = (err) => err.body?.error?.message ?? err.message;

function fail(message) {
  process.stderr.write(`kv-emulator: ${message}\n`);
  process.exit(2);
}

function parsePort(value, flag) {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`${flag} must be a port number, got "${value}"`);
  return port;
}

function parseCommandLine(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        port: { type: 'string' },
        'identity-port': { type: 'string' },
        'state-dir': { type: 'string' },
        hostname: { type: 'string', default: 'localhost' },
        identities: { type: 'string' },
        'token-ttl': { type: 'string' },
        'identity-header': { type: 'string' },
        'tenant-id': { type: 'string' },
        'no-purge-protection': { type: 'boolean' },
        'recoverable-days': { type: 'string' },
        'permission-model': { type: 'string' },
        verbose: { type: 'boolean' },
        help: { type: 'boolean' },
      },
    }));
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (values.port === undefined || values['state-dir'] === undefined) fail(`--port and --state-dir are required\n${USAGE}`);
  const port = parsePort(values.port, '--port');
  const identityPort = values['identity-port'] !== undefined
    ? parsePort(values['identity-port'], '--identity-port')
    : (port === 0 ? 0 : port + 1);

  // Settings given on the command line override (and replace) persisted ones.
  const overrides = {};
  if (values['token-ttl'] !== undefined) overrides.token_ttl = Number(values['token-ttl']);
  if (values['identity-header'] !== undefined) overrides.identity_header = values['identity-header'];
  if (values['tenant-id'] !== undefined) overrides.tenant_id = values['tenant-id'];
  if (values['no-purge-protection']) overrides.purge_protection = false;
  if (values['recoverable-days'] !== undefined) overrides.recoverable_days = Number(values['recoverable-days']);
  if (values['permission-model'] !== undefined) overrides.permission_model = values['permission-model'];

  return {
    port,
    identityPort,
    stateDir: path.resolve(values['state-dir']),
    hostname: values.hostname,
    identitiesFile: values.identities,
    verbose: Boolean(values.verbose),
    overrides,
  };
}

function loadIdentities(identities, file) {
  try {
    const list = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!Array.isArray(list)) throw new Error('expected a JSON array');
    for (const spec of list) {
      if (!identities.all[spec.name]) {
        identities.create(spec);
      } else if (spec.permissions !== undefined) {
        identities.setPermissions(spec.name, spec.permissions);
      }
    }
  } catch (err) {
    fail(`--identities ${file}: ${errorMessage(err)}`);
  }
}


function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => resolve(server.address().port));
  });
}

// Wraps a handler so that an unparsable request target or an unexpected
// exception still produces a response rather than a hung connection.
function serve(handler) {
  return async (req, res) => {
    let target;
    try {
      target = parseTarget(req);
    } catch {
      sendJson(res, 400, { error: { code: 'BadParameter', message: 'The request target is not a valid path.' } });
      return;
    }
    try {
      await handler(req, res, target);
    } catch (err) {
      process.stderr.write(`kv-emulator: internal error on ${req.method} ${req.url}: ${err.stack}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: { code: 'InternalServerError', message: err.message } });
      else res.destroy();
    }
  };
}

async function main() {
  // Exit normally on a signal, even during start-up, so that 'exit' handlers
  // (the state-directory lock) run. State is saved after every change, so
  // there is nothing to flush.
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
  const opts = parseCommandLine(process.argv.slice(2));
  fs.mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });

  const store = new StateStore(opts.stateDir);
  initConfig(store.data.config, opts.overrides);
  store.save();
  const identities = new Identities(store);
  if (opts.identitiesFile) loadIdentities(identities, opts.identitiesFile);
  const tls = ensureCertificates(opts.stateDir, opts.hostname);
  const faults = new Faults();
  const log = new RequestLog(opts.verbose ? process.stderr : null);

  // Servers listen before handlers are attached because with port 0 the URLs
  // (and so every kid) are only known once the OS has picked the ports.
  const vaultServer = https.createServer({ key: tls.key, cert: tls.cert });
  const identityServer = http.createServer();
  let vaultPort;
  let identityPort;
  try {
    vaultPort = await listen(vaultServer, opts.port);
    identityPort = await listen(identityServer, opts.identityPort);
  } catch (err) {
    fail(`cannot listen on ${HOST}: ${err.message}`);
  }

  const identityBase = `http://${HOST}:${identityPort}`;
  const urls = {
    vault_url: `https://${opts.hostname}:${vaultPort}`,
    token_url: `${identityBase}/metadata/identity/oauth2/token`,
    app_service_url: `${identityBase}/msi/token`,
    admin_url: `${identityBase}/_admin`,
    ca_file: tls.caFile,
  };
  const vault = new KeyVault(store, urls.vault_url);
  const vaultName = opts.hostname.split('.')[0];
  const shared = { vault, identities, faults, log, store };

  vaultServer.on('request', serve(createVaultHandler({ ...shared, vaultName })));
  const tokenHandler = createTokenHandler(shared);
  const adminHandler = createAdminHandler({ ...shared, urls });
  identityServer.on('request', serve(async (req, res, target) => {
    if (await tokenHandler(req, res, target)) return;
    if (await adminHandler(req, res, target)) return;
    sendJson(res, 404, { error: 'not_found', error_description: `No endpoint at ${target.path}.` });
  }));

  const lines = Object.entries(urls).map(([k, v]) => `${k}=${v}\n`).join('');
  // "ready" goes out only once the address lines are flushed, so a reader
  // that waits for it has everything.
  process.stdout.write(lines, () => process.stdout.write('ready\n'));
}

main().catch((err) => fail(errorMessage(err)));

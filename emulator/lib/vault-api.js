'use strict';
// The Key Vault data-plane endpoint (HTTPS). Per request, in the service's
// order: injected fault -> bearer token (401 + challenge before anything else
// is looked at, because the SDK's first request is deliberately sent without
// a token and without its body) -> api-version -> route -> access check ->
// body -> key store.

const crypto = require('node:crypto');
const { HttpError, serviceError, badParameter } = require('./errors');
const { pathSegments, readBody, parseJsonObject, sendJson } = require('./http');
const { CRYPTO_OPERATIONS } = require('./keys');
const { Faults } = require('./faults');

const API_VERSIONS = new Set(['7.0', '7.1', '7.2', '7.3', '7.4', '7.5', '7.6', '2025-07-01']);
const LATEST_API_VERSION = '2025-07-01';
const MAX_PAGE = 25;

// Route table entries: the access-policy permission an operation needs and
// the RBAC data action named in a ForbiddenByRbac message.
const ACTION = 'Microsoft.KeyVault/vaults';
const OPS = {
  listKeys: { permission: 'list', action: `${ACTION}/keys/read` },
  getKey: { permission: 'get', action: `${ACTION}/keys/read` },
  createKey: { permission: 'create', action: `${ACTION}/keys/create/action` },
  updateKey: { permission: 'update', action: `${ACTION}/keys/write` },
  deleteKey: { permission: 'delete', action: `${ACTION}/keys/delete` },
  rotateKey: { permission: 'rotate', action: `${ACTION}/keys/rotate/action` },
  listVersions: { permission: 'list', action: `${ACTION}/keys/read` },
  listDeleted: { permission: 'list', action: `${ACTION}/deletedkeys/read` },
  getDeleted: { permission: 'get', action: `${ACTION}/deletedkeys/read` },
  purgeDeleted: { permission: 'purge', action: `${ACTION}/deletedkeys/delete` },
  recoverDeleted: { permission: 'recover', action: `${ACTION}/deletedkeys/recover/action` },
  wrapkey: { permission: 'wrapKey', action: `${ACTION}/keys/wrap/action` },
  unwrapkey: { permission: 'unwrapKey', action: `${ACTION}/keys/unwrap/action` },
  encrypt: { permission: 'encrypt', action: `${ACTION}/keys/encrypt/action` },
  decrypt: { permission: 'decrypt', action: `${ACTION}/keys/decrypt/action` },
};

// Maps method + path to { op, name, version, segment }. Paths are split on
// '/' without collapsing empty segments: `/keys/k//unwrapkey` (what a
// versionless CryptographyClient sends) has an empty version, meaning latest.
// One trailing slash is ignored (`GET /keys/k/` is what KeyClient sends).
function route(method, path) {
  const segs = pathSegments(path, badParameter);
  if (segs.length > 1 && segs[segs.length - 1] === '') segs.pop();
  const [collection, name, third, fourth] = segs;
  const allow = (table) => {
    const op = table[method];
    if (!op) {
      throw new HttpError(405, { error: { code: 'MethodNotAllowed', message: `${method} is not supported on ${path}.` } },
        { Allow: Object.keys(table).join(', ') });
    }
    return { op, name, version: third, segment: fourth };
  };

  if (collection === 'keys') {
    if (segs.length === 1) return allow({ GET: 'listKeys' });
    if (segs.length === 2) return allow({ GET: 'getKey', PATCH: 'updateKey', DELETE: 'deleteKey' });
    if (segs.length === 3) {
      if (third === 'create') return allow({ POST: 'createKey' });
      if (third === 'rotate') return allow({ POST: 'rotateKey' });
      if (third === 'versions') return allow({ GET: 'listVersions' });
      return allow({ GET: 'getKey', PATCH: 'updateKey' });
    }
    if (segs.length === 4 && CRYPTO_OPERATIONS[fourth]) return allow({ POST: fourth });
  } else if (collection === 'deletedkeys') {
    if (segs.length === 1) return allow({ GET: 'listDeleted' });
    if (segs.length === 2) return allow({ GET: 'getDeleted', DELETE: 'purgeDeleted' });
    if (segs.length === 3 && third === 'recover') return allow({ POST: 'recoverDeleted' });
  }
  throw serviceError(404, 'NotFound', `The emulator has no operation at ${method} ${path}.`);
}

function createVaultHandler({ vault, identities, faults, log, store, vaultName }) {
  const config = store.data.config;
  const challenge = () => `Bearer authorization="https://login.windows.net/${config.tenant_id}", `
    + 'resource="https://vault.azure.net"';

  function unauthorized(message) {
    return new HttpError(401, { error: { code: 'Unauthorized', message } }, { 'WWW-Authenticate': challenge() });
  }

  function authenticate(req) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization || '');
    if (!match) throw unauthorized('AKV10000: Request is missing a Bearer or PoP token.');
    const { identity, reason } = identities.authenticate(match[1]);
    if (!identity) throw unauthorized(reason);
    return identity;
  }

  function checkApiVersion(query) {
    const version = query.get('api-version');
    if (!version) throw badParameter('The api-version query parameter is missing; it is required for every request.');
    if (!API_VERSIONS.has(version)) {
      throw badParameter(`The specified version (${version}) is not recognized. `
        + `Consider using the latest supported version (${LATEST_API_VERSION}).`);
    }
    return version;
  }

  function accessDenied(identity, op, resource) {
    const caller = `appid=${identity.client_id};oid=${identity.object_id};iss=https://sts.windows.net/${config.tenant_id}/`;
    const { permission, action } = OPS[op];
    if (config.permission_model === 'rbac') {
      return serviceError(403, 'Forbidden', 'Caller is not authorized to perform action on resource.\r\n'
        + 'If role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\n'
        + `Caller: ${caller}\r\nAction: '${action}'\r\nResource: '${resource}'\r\n`
        + `Assignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: ${vaultName};location=local\r\n`,
      'ForbiddenByRbac');
    }
    return serviceError(403, 'Forbidden', `The user, group or application '${caller}' does not have keys ${permission} `
      + `permission on key vault '${vaultName};location=local'. For help resolving this issue, please see `
      + 'https://go.microsoft.com/fwlink/?linkid=2125287', 'AccessDenied');
  }

  // Slices a list into pages of at most `maxresults` (1-25, default 25). The
  // continuation is an opaque $skiptoken inside an absolute nextLink, which
  // clients follow verbatim.
  function page(items, query, apiVersion, basePath) {
    let max = MAX_PAGE;
    if (query.has('maxresults')) {
      max = Number(query.get('maxresults'));
      if (!Number.isInteger(max) || max < 1 || max > MAX_PAGE) {
        throw badParameter(`The value of maxresults must be an integer between 1 and ${MAX_PAGE}.`);
      }
    }
    let offset = 0;
    if (query.has('$skiptoken')) {
      try {
        offset = JSON.parse(Buffer.from(query.get('$skiptoken'), 'base64url').toString()).offset;
      } catch {
        offset = NaN;
      }
      if (!Number.isInteger(offset) || offset < 0) throw badParameter('The $skiptoken is invalid.');
    }
    const value = items.slice(offset, offset + max);
    let nextLink = null;
    if (offset + max < items.length) {
      const next = new URLSearchParams({ 'api-version': apiVersion });
      next.set('$skiptoken', Buffer.from(JSON.stringify({ offset: offset + max })).toString('base64url'));
      if (query.has('maxresults')) next.set('maxresults', String(max));
      nextLink = `${vault.vaultUrl}${basePath}?${next}`;
    }
    return { value, nextLink };
  }

  async function dispatch({ op, name, version, segment }, body, query, apiVersion) {
    switch (op) {
      case 'listKeys': return page(vault.listKeys(), query, apiVersion, '/keys');
      case 'getKey': return vault.getKey(name, version);
      case 'createKey': return vault.createKey(name, body);
      case 'updateKey': return vault.updateKey(name, version, body);
      case 'deleteKey': return vault.deleteKey(name);
      case 'rotateKey': return vault.rotateKey(name);
      case 'listVersions': return page(vault.listVersions(name), query, apiVersion, `/keys/${name}/versions`);
      case 'listDeleted': return page(vault.listDeletedKeys(), query, apiVersion, '/deletedkeys');
      case 'getDeleted': return vault.getDeletedKey(name);
      case 'purgeDeleted': vault.purgeDeletedKey(name); return undefined;
      case 'recoverDeleted': return vault.recoverDeletedKey(name);
      default: return vault.cryptoOperation(segment, name, version, body);
    }
  }

  return async function handleVaultRequest(req, res, target) {
    const ctx = {};
    log.track('vault', req, res, target, ctx);
    const headers = {
      'Cache-Control': 'no-cache',
      'x-ms-request-id': crypto.randomUUID(),
      'x-ms-keyvault-service-version': '1.9.0.0',
      'x-ms-keyvault-region': 'local',
    };
    try {
      const fault = faults.take('vault', req.method, target.path);
      if (fault) {
        ctx.fault = fault.action;
        if (await Faults.apply(fault, req, res)) return;
      }
      const raw = await readBody(req);
      const identity = authenticate(req);
      ctx.identity = identity.name;
      const apiVersion = checkApiVersion(target.query);
      const match = route(req.method, target.path);
      if (!identities.has(identity, OPS[match.op].permission)) {
        throw accessDenied(identity, match.op, `${vault.vaultUrl}${target.path}`);
      }
      const body = ['createKey', 'updateKey'].includes(match.op) || CRYPTO_OPERATIONS[match.op]
        ? parseJsonObject(raw, badParameter) : {};
      const result = await dispatch(match, body, target.query, apiVersion);
      sendJson(res, result === undefined ? 204 : 200, result, headers);
    } catch (err) {
      if (err instanceof HttpError) {
        sendJson(res, err.status, err.body, { ...headers, ...err.headers });
      } else {
        process.stderr.write(`kv-emulator: internal error on ${req.method} ${target.path}: ${err.stack}\n`);
        sendJson(res, 500, { error: { code: 'InternalServerError', message: 'Internal emulator error.' } }, headers);
      }
    }
  };
}

module.exports = { createVaultHandler };

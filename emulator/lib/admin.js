'use strict';
// Admin API under /_admin on the identity port (plain HTTP, JSON, no auth: the
// port is bound to 127.0.0.1). It lets tests drive the emulator with a plain
// HTTP client: settings, identities and permissions, token expiry, fault
// injection, the request log, and key shortcuts that need no token. Errors use
// the Key Vault shape {"error":{"code","message"}}. README.md documents every
// call.

const { HttpError, serviceError, badParameter } = require('./errors');
const { pathSegments, readBody, parseJsonObject, sendJson } = require('./http');
const { applyConfig } = require('./config');

function createAdminHandler({ vault, identities, faults, log, store, urls }) {
  const config = store.data.config;

  const permissionsOf = (body) => {
    if (body.permissions === undefined) throw badParameter('The body needs "permissions": [...].');
    return body.permissions;
  };

  // Enables or disables one version, or every version when none is given: a
  // test that "disables the key" means that no version of it may be used.
  function setEnabled(name, version, enabled) {
    const versions = version ? [version] : vault.versionIds(name);
    versions.forEach((v) => vault.updateKey(name, v, { attributes: { enabled } }));
    return vault.describe(name);
  }

  const KEY_ACTIONS = {
    enable: (name, body) => setEnabled(name, body.version, true),
    disable: (name, body) => setEnabled(name, body.version, false),
    rotate: (name) => vault.rotateKey(name),
    delete: (name) => vault.deleteKey(name),
    recover: (name) => vault.recoverDeletedKey(name),
    purge: (name) => { vault.purgeDeletedKey(name, { force: true }); },
  };

  // [method, pattern over the path below /_admin/, handler(params, body, query)].
  // A handler's return value is the 200 body; undefined means 204.
  const ROUTES = [
    ['GET', /^config$/, () => ({ ...config, ...urls })],
    ['PATCH', /^config$/, (p, body) => {
      applyConfig(config, body);
      store.save();
      return { ...config, ...urls };
    }],

    ['GET', /^identities$/, () => ({ identities: identities.list() })],
    ['POST', /^identities$/, (p, body) => identities.create(body)],
    ['GET', /^identities\/([^/]+)$/, ([name]) => identities.get(name)],
    ['DELETE', /^identities\/([^/]+)$/, ([name]) => { identities.remove(name); }],
    ['PUT', /^identities\/([^/]+)\/permissions$/, ([name], body) => identities.setPermissions(name, permissionsOf(body))],
    ['POST', /^identities\/([^/]+)\/grant$/, ([name], body) => identities.grant(name, permissionsOf(body))],
    ['POST', /^identities\/([^/]+)\/revoke$/, ([name], body) => identities.revoke(name, permissionsOf(body))],

    ['POST', /^tokens\/expire$/, (p, body) => {
      if (body.identity !== undefined) identities.get(body.identity);
      return { expired: identities.expireTokens(body.identity) };
    }],

    ['GET', /^faults$/, () => ({ faults: faults.list() })],
    ['POST', /^faults$/, (p, body) => faults.add(body)],
    ['DELETE', /^faults$/, () => { faults.clear(); }],
    ['DELETE', /^faults\/(\d+)$/, ([id]) => {
      if (!faults.remove(Number(id))) throw serviceError(404, 'NotFound', `No fault with id ${id}.`);
    }],

    ['GET', /^requests$/, (p, body, query) => {
      const since = query.has('since') ? Number(query.get('since')) : 0;
      if (!Number.isSafeInteger(since) || since < 0) throw badParameter('"since" must be a sequence number.');
      return { requests: log.list(since), last_seq: log.seq };
    }],
    ['DELETE', /^requests$/, () => { log.clear(); }],

    ['GET', /^keys$/, () => ({ keys: vault.names().map((name) => vault.describe(name)) })],
    ['GET', /^keys\/([^/]+)$/, ([name]) => vault.describe(name)],
    // kty defaults to RSA so that `{}` is enough for a test key.
    ['POST', /^keys\/([^/]+)$/, ([name], body) => vault.createKey(name, { kty: 'RSA', ...body })],
    ['PATCH', /^keys\/([^/]+)(?:\/([0-9a-fA-F]{32}))?$/, ([name, version], body) => vault.updateKey(name, version, body)],
    ['POST', /^keys\/([^/]+)\/(enable|disable|rotate|delete|recover|purge)$/,
      ([name, action], body) => KEY_ACTIONS[action](name, body)],
  ];

  async function dispatch(req, target) {
    const rel = pathSegments(target.path, badParameter).slice(1).filter((s) => s !== '').join('/');
    const candidates = ROUTES.map(([method, pattern, handler]) => ({ method, match: pattern.exec(rel), handler }))
      .filter((r) => r.match);
    if (candidates.length === 0) throw serviceError(404, 'NotFound', `No admin operation at ${target.path}.`);
    const chosen = candidates.find((r) => r.method === req.method);
    if (!chosen) {
      throw new HttpError(405, { error: { code: 'MethodNotAllowed', message: `${req.method} is not supported on ${target.path}.` } },
        { Allow: candidates.map((r) => r.method).join(', ') });
    }
    const body = parseJsonObject(await readBody(req), badParameter);
    return chosen.handler(chosen.match.slice(1), body, target.query);
  }

  // Returns false when the path is not under /_admin.
  return async function handleAdminRequest(req, res, target) {
    if (target.path !== '/_admin' && !target.path.startsWith('/_admin/')) return false;
    try {
      const result = await dispatch(req, target);
      sendJson(res, result === undefined ? 204 : 200, result);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      sendJson(res, err.status, err.body, err.headers);
    }
    return true;
  };
}

module.exports = { createAdminHandler };

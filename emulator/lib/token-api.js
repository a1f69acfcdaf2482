'use strict';
// Managed-identity token endpoints (plain HTTP, like the real ones):
//
//   IMDS         GET /metadata/identity/oauth2/token[/]   header  Metadata: true
//                selectors client_id | object_id | msi_res_id
//                errors    {"error","error_description"}
//   App Service  GET /msi/token[/]                        header  X-IDENTITY-HEADER: <secret>
//                selectors client_id | principal_id | object_id | mi_res_id
//                errors    {"statusCode","message","correlationId"}
//
// The trailing-slash form of the IMDS path is what @azure/identity requests
// when AZURE_POD_IDENTITY_AUTHORITY_HOST redirects it here.

const crypto = require('node:crypto');
const { HttpError } = require('./errors');
const { sendJson } = require('./http');
const { Faults } = require('./faults');

const VAULT_RESOURCES = new Set(['https://vault.azure.net', 'https://vault.azure.net/']);
const APP_SERVICE_API_VERSION = '2019-08-01';
// IMDS identity API versions are dates; 2018-02-01 is the oldest one.
const IMDS_MIN_API_VERSION = '2018-02-01';

const imdsError = (status, error, description) => new HttpError(status, { error, error_description: description });

const appServiceError = (status, message) => new HttpError(status, {
  statusCode: status, message, correlationId: crypto.randomUUID(),
});

// Reads the identity selector from the query; `names` maps each accepted
// parameter to the identity field it selects by. More than one selector is
// ambiguous, and the real endpoints refuse it too.
function readSelector(query, names, onError) {
  const given = Object.keys(names).filter((p) => query.has(p));
  if (given.length > 1) throw onError(`Only one of ${given.join(', ')} may be specified.`);
  return given.length === 0 ? {} : { [names[given[0]]]: query.get(given[0]) };
}

function createTokenHandler({ identities, faults, log, store }) {
  const config = store.data.config;

  function tokenFor(identity, resource) {
    const { token, notBefore, expiresOn, ttl } = identities.issueToken(identity);
    return { token, notBefore, expiresOn, ttl, resource, clientId: identity.client_id };
  }

  function imds(req, query, ctx) {
    if (String(req.headers.metadata).toLowerCase() !== 'true') {
      throw imdsError(400, 'bad_request_102', 'Required metadata header not specified');
    }
    const apiVersion = query.get('api-version');
    if (!apiVersion) throw imdsError(400, 'invalid_request', 'Required query variable \'api-version\' is missing');
    if (!/^\d{4}-\d{2}-\d{2}$/.test(apiVersion) || apiVersion < IMDS_MIN_API_VERSION) {
      throw imdsError(400, 'invalid_request', `Invalid api-version '${apiVersion}'`);
    }
    const resource = query.get('resource');
    if (!resource) throw imdsError(400, 'invalid_request', 'Required query variable \'resource\' is missing');
    if (!VAULT_RESOURCES.has(resource)) {
      throw imdsError(400, 'invalid_resource', `AADSTS500011: The resource principal named ${resource} was not `
        + 'found in the tenant. The emulator issues tokens for https://vault.azure.net only.');
    }
    const selector = readSelector(query, { client_id: 'client_id', object_id: 'object_id', msi_res_id: 'resource_id' },
      (message) => imdsError(400, 'invalid_request', message));
    const identity = identities.select(selector);
    if (!identity) {
      const message = Object.keys(selector).length === 0 && identities.list().length > 1
        ? 'Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request'
        : 'Identity not found';
      throw imdsError(400, 'invalid_request', message);
    }
    ctx.identity = identity.name;
    const t = tokenFor(identity, resource);
    return {
      access_token: t.token,
      refresh_token: '',
      expires_in: String(t.ttl),
      expires_on: String(t.expiresOn),
      ext_expires_in: String(t.ttl),
      not_before: String(t.notBefore),
      resource: t.resource,
      token_type: 'Bearer',
      client_id: t.clientId,
    };
  }

  function appService(req, query, ctx) {
    if (req.headers['x-identity-header'] !== config.identity_header) {
      throw appServiceError(401, 'The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.');
    }
    const apiVersion = query.get('api-version');
    if (apiVersion !== APP_SERVICE_API_VERSION) {
      throw appServiceError(400, `The api-version must be ${APP_SERVICE_API_VERSION}; got '${apiVersion || ''}'.`);
    }
    const resource = query.get('resource');
    if (!VAULT_RESOURCES.has(resource)) {
      throw appServiceError(400, `The resource '${resource || ''}' is not supported; the emulator issues tokens `
        + 'for https://vault.azure.net only.');
    }
    const selector = readSelector(query,
      { client_id: 'client_id', principal_id: 'object_id', object_id: 'object_id', mi_res_id: 'resource_id' },
      (message) => appServiceError(400, message));
    const identity = identities.select(selector);
    if (!identity) throw appServiceError(400, 'No Managed Identity found for specified ClientId/ResourceId/PrincipalId.');
    ctx.identity = identity.name;
    const t = tokenFor(identity, resource);
    return {
      access_token: t.token,
      expires_on: String(t.expiresOn),
      resource: t.resource,
      token_type: 'Bearer',
      client_id: t.clientId,
    };
  }

  const ENDPOINTS = new Map([
    ['/metadata/identity/oauth2/token', imds],
    ['/metadata/identity/oauth2/token/', imds],
    ['/msi/token', appService],
    ['/msi/token/', appService],
  ]);

  // Returns false when the path is not a token endpoint, so the caller can
  // try its other routes.
  return async function handleTokenRequest(req, res, target) {
    const endpoint = ENDPOINTS.get(target.path);
    if (!endpoint) return false;
    const ctx = {};
    log.track('token', req, res, target, ctx);
    const fault = faults.take('token', req.method, target.path);
    if (fault) {
      ctx.fault = fault.action;
      if (await Faults.apply(fault, req, res)) return true;
    }
    req.resume(); // the JS SDK sends an empty form body; nothing in it matters
    try {
      if (req.method !== 'GET') throw new HttpError(405, { error: 'invalid_request', error_description: 'Use GET.' });
      sendJson(res, 200, endpoint(req, target.query, ctx));
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      sendJson(res, err.status, err.body, err.headers);
    }
    return true;
  };
}

module.exports = { createTokenHandler };

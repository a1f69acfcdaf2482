'use strict';
// Vault-wide settings. They persist in the state file; command-line flags and
// PATCH /_admin/config change them through the same validation.

const crypto = require('node:crypto');
const { badParameter } = require('./errors');

const DEFAULTS = {
  // Any fixed GUID will do: clients only echo it back from the 401 challenge.
  tenant_id: '7e1a0000-c0de-4e5b-9a11-000000000001',
  token_ttl: 3600,
  purge_protection: true,
  recoverable_days: 90,
  permission_model: 'access_policy',
};

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const VALIDATORS = {
  tenant_id: (v) => typeof v === 'string' && GUID_RE.test(v) || 'a GUID',
  token_ttl: (v) => Number.isSafeInteger(v) && v >= 1 && v <= 86400 * 7 || 'an integer from 1 to 604800 (seconds)',
  purge_protection: (v) => typeof v === 'boolean' || 'a boolean',
  recoverable_days: (v) => Number.isSafeInteger(v) && v >= 7 && v <= 90 || 'an integer from 7 to 90',
  permission_model: (v) => ['access_policy', 'rbac'].includes(v) || '"access_policy" or "rbac"',
  identity_header: (v) => typeof v === 'string' && /^[\x21-\x7e]+$/.test(v) || 'a non-empty printable string',
};

// Validates every field first, then assigns, so a bad patch changes nothing.
function applyConfig(config, patch) {
  for (const [field, value] of Object.entries(patch)) {
    const check = VALIDATORS[field];
    if (!check) throw badParameter(`Unknown setting "${field}". Known: ${Object.keys(VALIDATORS).join(', ')}.`);
    const verdict = check(value);
    if (verdict !== true) throw badParameter(`Setting "${field}" must be ${verdict}.`);
  }
  Object.assign(config, patch);
}

// Fills settings missing from a (possibly fresh) state, then applies overrides.
function initConfig(config, overrides) {
  for (const [field, value] of Object.entries(DEFAULTS)) {
    if (config[field] === undefined) config[field] = value;
  }
  // The App Service secret is random per state directory, like the platform's.
  if (config.identity_header === undefined) config.identity_header = crypto.randomBytes(16).toString('hex');
  applyConfig(config, overrides);
}

module.exports = { applyConfig, initConfig };

'use strict';
// Managed identities, their vault permissions, and the access tokens issued to
// them.
//
// Permissions follow the Key Vault *access policy* model: each identity holds
// a list of key permissions (get, wrapKey, unwrapKey, ...). The vault checks
// the caller's current list on every request, so a revoke takes effect on the
// next call (the real service can lag by a minute or so; tests want it now).
//
// Tokens are opaque random strings, not JWTs: nothing in the client should
// parse a Key Vault token. Only a SHA-256 of each token is stored, so neither
// the state file nor the request log can leak a usable bearer token.

const crypto = require('node:crypto');
const { serviceError } = require('./errors');

// Access-policy key permissions, spelled as Azure spells them.
const KEY_PERMISSIONS = [
  'get', 'list', 'update', 'create', 'import', 'delete', 'recover', 'backup', 'restore',
  'decrypt', 'encrypt', 'unwrapKey', 'wrapKey', 'verify', 'sign', 'purge', 'rotate',
  'getrotationpolicy', 'setrotationpolicy', 'release',
];
const PERMISSION_BY_LOWER = new Map(KEY_PERMISSIONS.map((p) => [p.toLowerCase(), p]));

const SUBSCRIPTION_ID = '00000000-0000-0000-0000-000000000000';
const RESOURCE_GROUP = 'cmk-emulator';
const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// User-assigned identity names: 3-128 characters, letters, digits, '-' and '_'.
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$/;

const invalid = (message) => serviceError(400, 'BadParameter', message);

// Accepts permission names case-insensitively and the shorthand "all";
// returns canonical spellings.
function normalizePermissions(list) {
  if (!Array.isArray(list)) throw invalid('"permissions" must be an array of key permission names.');
  const out = new Set();
  for (const entry of list) {
    const lower = String(entry).toLowerCase();
    if (lower === 'all') {
      KEY_PERMISSIONS.forEach((p) => out.add(p));
    } else if (PERMISSION_BY_LOWER.has(lower)) {
      out.add(PERMISSION_BY_LOWER.get(lower));
    } else {
      throw invalid(`Unknown key permission "${entry}". Known: ${KEY_PERMISSIONS.join(', ')}, all.`);
    }
  }
  return [...out];
}

const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');
const nowSeconds = () => Math.floor(Date.now() / 1000);

class Identities {
  constructor(store) {
    this.store = store;
  }

  get all() {
    return this.store.data.identities;
  }

  list() {
    return Object.values(this.all);
  }

  get(name) {
    const identity = this.all[name];
    if (!identity) throw serviceError(404, 'IdentityNotFound', `No identity named "${name}".`);
    return identity;
  }

  create({ name, client_id: clientId, object_id: objectId, resource_id: resourceId, permissions = [] }) {
    if (typeof name !== 'string' || !NAME_RE.test(name)) {
      throw invalid('"name" must be 3-128 characters of letters, digits, "-" and "_".');
    }
    for (const [field, value] of [['client_id', clientId], ['object_id', objectId]]) {
      if (value !== undefined && !(typeof value === 'string' && GUID_RE.test(value))) {
        throw invalid(`"${field}" must be a GUID.`);
      }
    }
    const identity = {
      name,
      client_id: (clientId || crypto.randomUUID()).toLowerCase(),
      object_id: (objectId || crypto.randomUUID()).toLowerCase(),
      resource_id: resourceId || `/subscriptions/${SUBSCRIPTION_ID}/resourcegroups/${RESOURCE_GROUP}`
        + `/providers/Microsoft.ManagedIdentity/userAssignedIdentities/${name}`,
      permissions: normalizePermissions(permissions),
    };
    for (const other of this.list()) {
      if (other.name === name || other.client_id === identity.client_id
        || other.object_id === identity.object_id
        || other.resource_id.toLowerCase() === identity.resource_id.toLowerCase()) {
        throw serviceError(409, 'Conflict', `An identity with this name, client_id, object_id or resource_id exists: "${other.name}".`);
      }
    }
    this.all[name] = identity;
    this.store.save();
    return identity;
  }

  remove(name) {
    this.get(name);
    delete this.all[name];
    this.store.save();
  }

  setPermissions(name, permissions) {
    const identity = this.get(name);
    identity.permissions = normalizePermissions(permissions);
    this.store.save();
    return identity;
  }

  grant(name, permissions) {
    const identity = this.get(name);
    const merged = new Set([...identity.permissions, ...normalizePermissions(permissions)]);
    identity.permissions = KEY_PERMISSIONS.filter((p) => merged.has(p));
    this.store.save();
    return identity;
  }

  revoke(name, permissions) {
    const identity = this.get(name);
    const removed = new Set(normalizePermissions(permissions));
    identity.permissions = identity.permissions.filter((p) => !removed.has(p));
    this.store.save();
    return identity;
  }

  // Finds the identity a token request selects. `selector` has at most one of
  // client_id / object_id / resource_id; GUIDs and ARM ids compare
  // case-insensitively as they do in Azure. With no selector, the only
  // identity is chosen (IMDS does that when a VM has exactly one identity).
  select(selector) {
    const identities = this.list();
    const entries = Object.entries(selector).filter(([, v]) => v !== undefined && v !== null);
    if (entries.length === 0) return identities.length === 1 ? identities[0] : undefined;
    const [field, value] = entries[0];
    return identities.find((i) => i[field].toLowerCase() === value.toLowerCase());
  }

  has(identity, permission) {
    const current = this.all[identity.name];
    return Boolean(current && current.object_id === identity.object_id && current.permissions.includes(permission));
  }

  issueToken(identity) {
    const ttl = this.store.data.config.token_ttl;
    const now = nowSeconds();
    const token = crypto.randomBytes(32).toString('base64url');
    const tokens = this.store.data.tokens;
    for (const [hash, record] of Object.entries(tokens)) {
      if (record.expires_on <= now) delete tokens[hash];
    }
    tokens[sha256(token)] = {
      name: identity.name, client_id: identity.client_id, object_id: identity.object_id,
      not_before: now, expires_on: now + ttl,
    };
    this.store.save();
    return { token, notBefore: now, expiresOn: now + ttl, ttl };
  }

  // Returns { identity } for a valid token, or { reason } explaining the 401.
  // The identity is the one recorded at issue time: a token outlives the
  // deletion of its identity (as an Entra token would), but the deleted
  // identity has no permissions left.
  authenticate(token) {
    const record = this.store.data.tokens[sha256(token)];
    if (!record) return { reason: 'The bearer token is not one this emulator issued, or it was revoked.' };
    if (record.expires_on <= nowSeconds()) return { reason: 'The bearer token has expired.' };
    return { identity: { name: record.name, client_id: record.client_id, object_id: record.object_id } };
  }

  // Forgets issued tokens (all, or one identity's); returns how many.
  expireTokens(name) {
    const tokens = this.store.data.tokens;
    let count = 0;
    for (const [hash, record] of Object.entries(tokens)) {
      if (name === undefined || record.name === name) {
        delete tokens[hash];
        count += 1;
      }
    }
    this.store.save();
    return count;
  }
}

module.exports = { Identities };

'use strict';
// The key store: RSA keys with versions, attributes, soft delete, and the
// wrap/unwrap/encrypt/decrypt operations. Methods take already-parsed request
// pieces and return the JSON the service would send (KeyBundle, KeyItem,
// DeletedKeyBundle, KeyOperationResult); they throw HttpError with Key Vault
// error bodies. Authentication and access policy are the caller's job
// (vault-api.js), because the service checks them before it looks at a key.
//
// Persisted layout, under state.keys / state.deletedKeys keyed by the
// lower-cased name (Key Vault names are case-insensitive, but the kid keeps
// the spelling used at creation):
//   { name, versions: [ { version, kty, key_size, key_ops, n, e, private_key,
//                         attributes: { enabled, nbf, exp, created, updated },
//                         tags } ],            // oldest first
//     deletedDate, scheduledPurgeDate }        // deleted keys only

const crypto = require('node:crypto');
const { promisify } = require('node:util');
const { serviceError, badParameter } = require('./errors');

const generateKeyPair = promisify(crypto.generateKeyPair);

const NAME_RE = /^[0-9a-zA-Z-]{1,127}$/;
const KEY_TYPES = ['RSA', 'RSA-HSM'];
const KEY_SIZES = [2048, 3072, 4096];
const KEY_OPS = ['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey', 'import', 'export'];
// What the service grants an RSA key created without key_ops.
const DEFAULT_RSA_OPS = ['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey'];
const MAX_TAGS = 15;

// Path segment -> key operation. `usesPrivateKey` operations keep working
// outside the nbf/exp window (so an expired KEK can still unwrap).
const CRYPTO_OPERATIONS = {
  wrapkey: { op: 'wrapKey', usesPrivateKey: false },
  unwrapkey: { op: 'unwrapKey', usesPrivateKey: true },
  encrypt: { op: 'encrypt', usesPrivateKey: false },
  decrypt: { op: 'decrypt', usesPrivateKey: true },
};
// JOSE algorithm -> OAEP digest (used for both the label hash and MGF1).
// RSA1_5 is absent: Node 20 refuses PKCS#1 v1.5 decryption (CVE-2023-46809).
const OAEP_DIGESTS = { 'RSA-OAEP': 'sha1', 'RSA-OAEP-256': 'sha256' };
const DIGEST_BYTES = { sha1: 20, sha256: 32 };

const nowSeconds = () => Math.floor(Date.now() / 1000);

const keyNotFound = (id) => serviceError(404, 'KeyNotFound',
  `A key with (name/id) ${id} was not found in this key vault. If you recently deleted this key you may be `
  + 'able to recover it using the correct recovery command. For help resolving this issue, please see '
  + 'https://go.microsoft.com/fwlink/?linkid=2125182');

const forbidden = (message, innerCode) => serviceError(403, 'Forbidden', message, innerCode);

// Binary request values: the service emits base64url without padding; the
// spec has an example in standard base64, so both alphabets and optional
// padding are accepted.
function decodeBinary(value) {
  if (typeof value !== 'string' || value.length === 0) {
    throw badParameter('Property "value" must be a non-empty base64url string.');
  }
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(value) || value.replace(/=+$/, '').length % 4 === 1) {
    throw badParameter('Property "value" is not valid base64url.');
  }
  return Buffer.from(value.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

function validateName(name) {
  if (!NAME_RE.test(name)) {
    throw badParameter(`The request URI contains an invalid name: ${name}. Names must match ^[0-9a-zA-Z-]+$.`);
  }
}

function parseKeyOps(value) {
  if (!Array.isArray(value) || value.some((op) => !KEY_OPS.includes(op))) {
    throw badParameter(`Property "key_ops" must be an array of: ${KEY_OPS.join(', ')}.`);
  }
  return [...new Set(value)];
}

function parseTags(value) {
  if (value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)
    || Object.values(value).some((v) => typeof v !== 'string')) {
    throw badParameter('Property "tags" must be an object of string values.');
  }
  if (Object.keys(value).length > MAX_TAGS) throw badParameter(`A key can have at most ${MAX_TAGS} tags.`);
  return { ...value };
}

// Validates `attributes` from a create or update body into a partial
// { enabled, nbf, exp } (null clears nbf/exp on update). Read-only attributes
// the client echoes back (created, updated, recoveryLevel...) are ignored.
function parseAttributes(value) {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw badParameter('Property "attributes" must be an object.');
  const out = {};
  if (value.enabled !== undefined) {
    if (typeof value.enabled !== 'boolean') throw badParameter('Attribute "enabled" must be a boolean.');
    out.enabled = value.enabled;
  }
  for (const field of ['nbf', 'exp']) {
    if (value[field] === undefined) continue;
    if (value[field] !== null && !Number.isSafeInteger(value[field])) {
      throw badParameter(`Attribute "${field}" must be an integer (seconds since 1970-01-01 UTC).`);
    }
    out[field] = value[field];
  }
  if (value.exportable === true) {
    throw badParameter('Exportable keys need a release policy, which the emulator does not support.');
  }
  return out;
}

function parseCreateBody(body) {
  if (!KEY_TYPES.includes(body.kty)) {
    throw badParameter(`Property "kty" must be one of ${KEY_TYPES.join(', ')} (the emulator has no EC or oct keys).`);
  }
  const keySize = body.key_size === undefined ? 2048 : body.key_size;
  if (!KEY_SIZES.includes(keySize)) throw badParameter(`Property "key_size" must be one of ${KEY_SIZES.join(', ')}.`);
  const exponent = body.public_exponent === undefined ? 65537 : body.public_exponent;
  if (!Number.isSafeInteger(exponent) || exponent < 3 || exponent % 2 === 0 || exponent > 0xffffffff) {
    throw badParameter('Property "public_exponent" must be an odd integer between 3 and 2^32-1.');
  }
  return {
    kty: body.kty,
    keySize,
    exponent,
    keyOps: body.key_ops === undefined ? DEFAULT_RSA_OPS : parseKeyOps(body.key_ops),
    attributes: parseAttributes(body.attributes),
    tags: body.tags === undefined ? undefined : parseTags(body.tags),
  };
}

class KeyVault {
  // `vaultUrl` is the base of every kid, e.g. https://localhost:8443.
  constructor(store, vaultUrl) {
    this.store = store;
    this.vaultUrl = vaultUrl;
    this.privateKeys = new Map(); // version -> KeyObject, so PEM is parsed once
  }

  get keys() { return this.store.data.keys; }

  get deletedKeys() { return this.store.data.deletedKeys; }

  // ---- lookups -----------------------------------------------------------

  requireKey(name) {
    const key = this.keys[name.toLowerCase()];
    if (!key) throw keyNotFound(name);
    return key;
  }

  // An empty or missing version means the latest one: the SDK sends
  // `/keys/{name}/` and `/keys/{name}//unwrapkey` for versionless ids.
  requireVersion(name, version) {
    const key = this.requireKey(name);
    if (!version) return { key, entry: key.versions[key.versions.length - 1] };
    const entry = key.versions.find((v) => v.version === version.toLowerCase());
    if (!entry) throw keyNotFound(`${name}/${version}`);
    return { key, entry };
  }

  requireDeleted(name) {
    const key = this.deletedKeys[name.toLowerCase()];
    if (!key) {
      throw serviceError(404, 'KeyNotFound', `A deleted key with (name/id) ${name} was not found in this key vault.`);
    }
    return key;
  }

  assertNameUsable(name) {
    const deleted = this.deletedKeys[name.toLowerCase()];
    if (deleted) {
      throw serviceError(409, 'Conflict', `Key ${deleted.name} is currently in a deleted but recoverable state, `
        + 'and its name cannot be reused; in this state, the key can only be recovered or purged.',
      'ObjectIsDeletedButRecoverable');
    }
  }

  // Every key name, live or soft-deleted, in list order.
  names() {
    return [...Object.values(this.keys), ...Object.values(this.deletedKeys)].map((k) => k.name)
      .sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  }

  versionIds(name) {
    return this.requireKey(name).versions.map((v) => v.version);
  }

  // ---- wire formats ------------------------------------------------------

  // Soft delete is always on. Purge protection removes "+Purgeable"; a
  // retention shorter than 90 days makes the level "CustomizedRecoverable".
  recoveryLevel() {
    const { purge_protection: protect, recoverable_days: days } = this.store.data.config;
    return (days < 90 ? 'CustomizedRecoverable' : 'Recoverable') + (protect ? '' : '+Purgeable');
  }

  attributesJson(entry) {
    const a = entry.attributes;
    const out = { enabled: a.enabled };
    if (a.nbf !== undefined && a.nbf !== null) out.nbf = a.nbf;
    if (a.exp !== undefined && a.exp !== null) out.exp = a.exp;
    out.created = a.created;
    out.updated = a.updated;
    out.recoveryLevel = this.recoveryLevel();
    out.recoverableDays = this.store.data.config.recoverable_days;
    return out;
  }

  kid(key, entry) {
    return entry ? `${this.vaultUrl}/keys/${key.name}/${entry.version}` : `${this.vaultUrl}/keys/${key.name}`;
  }

  bundle(key, entry) {
    const out = {
      key: { kid: this.kid(key, entry), kty: entry.kty, key_ops: entry.key_ops, n: entry.n, e: entry.e },
      attributes: this.attributesJson(entry),
    };
    if (entry.tags) out.tags = entry.tags;
    return out;
  }

  item(key, entry, kid) {
    const out = { kid, attributes: this.attributesJson(entry) };
    if (entry.tags) out.tags = entry.tags;
    return out;
  }

  deletedFields(key) {
    return {
      recoveryId: `${this.vaultUrl}/deletedkeys/${key.name}`,
      deletedDate: key.deletedDate,
      scheduledPurgeDate: key.scheduledPurgeDate,
    };
  }

  // ---- operations --------------------------------------------------------

  async createKey(name, body) {
    validateName(name);
    const params = parseCreateBody(body);
    this.assertNameUsable(name);
    const entry = await this.generateVersion(params);
    // Re-check: the name may have been deleted while the key was generated.
    this.assertNameUsable(name);
    let key = this.keys[name.toLowerCase()];
    if (!key) {
      key = { name, versions: [] };
      this.keys[name.toLowerCase()] = key;
    }
    key.versions.push(entry);
    this.store.save();
    return this.bundle(key, entry);
  }

  async generateVersion({ kty, keySize, exponent, keyOps, attributes, tags }) {
    const { privateKey } = await generateKeyPair('rsa', { modulusLength: keySize, publicExponent: exponent });
    const jwk = privateKey.export({ format: 'jwk' });
    const now = nowSeconds();
    const version = crypto.randomBytes(16).toString('hex');
    this.privateKeys.set(version, privateKey);
    return {
      version,
      kty,
      key_size: keySize,
      key_ops: keyOps,
      n: jwk.n,
      e: jwk.e,
      private_key: privateKey.export({ format: 'pem', type: 'pkcs8' }),
      attributes: {
        enabled: attributes.enabled === undefined ? true : attributes.enabled,
        nbf: attributes.nbf ?? undefined,
        exp: attributes.exp ?? undefined,
        created: now,
        updated: now,
      },
      tags,
    };
  }

  getKey(name, version) {
    const { key, entry } = this.requireVersion(name, version);
    if (!entry.attributes.enabled) throw forbidden('Operation get is not allowed on a disabled key.', 'KeyDisabled');
    return this.bundle(key, entry);
  }

  updateKey(name, version, body) {
    const { key, entry } = this.requireVersion(name, version);
    const attributes = parseAttributes(body.attributes);
    const keyOps = body.key_ops === undefined ? undefined : parseKeyOps(body.key_ops);
    const tags = body.tags === undefined ? entry.tags : parseTags(body.tags);
    Object.assign(entry.attributes, attributes, { updated: nowSeconds() });
    if (keyOps) entry.key_ops = keyOps;
    entry.tags = tags;
    this.store.save();
    return this.bundle(key, entry);
  }

  // A new version with the latest one's type, size, operations and tags. The
  // service would also apply a rotation policy; the emulator has none.
  async rotateKey(name) {
    const latest = this.requireVersion(name).entry;
    const entry = await this.generateVersion({
      kty: latest.kty,
      keySize: latest.key_size,
      exponent: Number.parseInt(Buffer.from(latest.e, 'base64url').toString('hex'), 16),
      keyOps: latest.key_ops,
      attributes: {},
      tags: latest.tags,
    });
    const key = this.requireKey(name); // the key may have been deleted meanwhile
    key.versions.push(entry);
    this.store.save();
    return this.bundle(key, entry);
  }

  listKeys() {
    return Object.keys(this.keys).sort().map((lower) => {
      const key = this.keys[lower];
      return this.item(key, key.versions[key.versions.length - 1], this.kid(key));
    });
  }

  // A name that does not exist lists as empty rather than 404 (unverified
  // against the live service; the secrets API behaves this way).
  listVersions(name) {
    const key = this.keys[name.toLowerCase()];
    if (!key) return [];
    return key.versions.map((entry) => this.item(key, entry, this.kid(key, entry)));
  }

  deleteKey(name) {
    const key = this.requireKey(name);
    const now = nowSeconds();
    key.deletedDate = now;
    key.scheduledPurgeDate = now + this.store.data.config.recoverable_days * 86400;
    delete this.keys[name.toLowerCase()];
    this.deletedKeys[name.toLowerCase()] = key;
    this.store.save();
    return this.deletedBundle(key);
  }

  deletedBundle(key) {
    return { ...this.bundle(key, key.versions[key.versions.length - 1]), ...this.deletedFields(key) };
  }

  getDeletedKey(name) {
    return this.deletedBundle(this.requireDeleted(name));
  }

  listDeletedKeys() {
    return Object.keys(this.deletedKeys).sort().map((lower) => {
      const key = this.deletedKeys[lower];
      const latest = key.versions[key.versions.length - 1];
      return { ...this.item(key, latest, this.kid(key)), ...this.deletedFields(key) };
    });
  }

  recoverDeletedKey(name) {
    const key = this.requireDeleted(name);
    delete key.deletedDate;
    delete key.scheduledPurgeDate;
    delete this.deletedKeys[name.toLowerCase()];
    this.keys[name.toLowerCase()] = key;
    this.store.save();
    return this.bundle(key, key.versions[key.versions.length - 1]);
  }

  // `force` is for the admin API only: it purges even under purge protection.
  purgeDeletedKey(name, { force = false } = {}) {
    const key = this.requireDeleted(name);
    if (this.store.data.config.purge_protection && !force) {
      throw forbidden(`Operation "purge" is not allowed because purge protection is enabled for this vault. `
        + 'Key Vault service will automatically purge it after the retention period has passed.');
    }
    delete this.deletedKeys[name.toLowerCase()];
    key.versions.forEach((v) => this.privateKeys.delete(v.version));
    this.store.save();
  }

  // wrapkey / unwrapkey / encrypt / decrypt. The checks run in the order the
  // service applies them: existence, enabled, key_ops, validity window, then
  // the request parameters.
  cryptoOperation(segment, name, version, body) {
    const { op, usesPrivateKey } = CRYPTO_OPERATIONS[segment];
    const { key, entry } = this.requireVersion(name, version);
    const { enabled, nbf, exp } = entry.attributes;
    if (!enabled) throw forbidden(`Operation ${op} is not allowed on a disabled key.`, 'KeyDisabled');
    if (!entry.key_ops.includes(op)) {
      throw forbidden(`Operation ${op} is not permitted on this key.`, 'KeyOperationForbidden');
    }
    if (!usesPrivateKey) {
      const now = nowSeconds();
      if (nbf !== undefined && nbf !== null && now < nbf) {
        throw forbidden(`Operation ${op} is not allowed before the key's activation date (nbf).`, 'KeyNotYetValid');
      }
      if (exp !== undefined && exp !== null && now >= exp) {
        throw forbidden(`Operation ${op} is not allowed on an expired key.`, 'KeyExpired');
      }
    }
    const digest = OAEP_DIGESTS[body.alg];
    if (!digest) {
      throw badParameter(`Algorithm "${body.alg}" is not supported for ${op}; use RSA-OAEP-256 or RSA-OAEP`
        + ' (the emulator does not implement RSA1_5).');
    }
    const input = decodeBinary(body.value);
    const modulusBytes = entry.key_size / 8;
    const options = { key: this.privateKey(entry), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: digest };
    let output;
    if (usesPrivateKey) {
      if (input.length !== modulusBytes) {
        throw badParameter(`The ciphertext must be ${modulusBytes} bytes for this key, got ${input.length}.`);
      }
      try {
        output = crypto.privateDecrypt(options, input);
      } catch {
        throw badParameter(`The value could not be decrypted with ${body.alg} by this key version.`);
      }
    } else {
      const limit = modulusBytes - 2 * DIGEST_BYTES[digest] - 2;
      if (input.length > limit) {
        throw badParameter(`The plaintext is ${input.length} bytes; ${body.alg} with this key takes at most ${limit}.`);
      }
      output = crypto.publicEncrypt(options, input);
    }
    return { kid: this.kid(key, entry), value: output.toString('base64url') };
  }

  privateKey(entry) {
    let keyObject = this.privateKeys.get(entry.version);
    if (!keyObject) {
      keyObject = crypto.createPrivateKey(entry.private_key);
      this.privateKeys.set(entry.version, keyObject);
    }
    return keyObject;
  }

  // Admin view of a key, disabled versions included; never key material.
  describe(name) {
    const lower = name.toLowerCase();
    const key = this.keys[lower] || this.deletedKeys[lower];
    if (!key) throw keyNotFound(name);
    return {
      name: key.name,
      deleted: Boolean(this.deletedKeys[lower]),
      ...(key.deletedDate ? this.deletedFields(key) : {}),
      versions: key.versions.map((entry) => ({
        kid: this.kid(key, entry),
        version: entry.version,
        kty: entry.kty,
        key_size: entry.key_size,
        key_ops: entry.key_ops,
        attributes: this.attributesJson(entry),
        tags: entry.tags,
      })),
    };
  }
}

module.exports = { KeyVault, CRYPTO_OPERATIONS };

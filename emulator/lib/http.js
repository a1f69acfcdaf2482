'use strict';
// Small HTTP helpers shared by the vault, token and admin servers.

const { HttpError } = require('./errors');

// Key Vault requests are tiny (a wrapped key is at most 512 bytes); anything
// larger than this is a client bug, not a workload.
const MAX_BODY_BYTES = 1024 * 1024;

// Splits a request target into its path and decoded query. `req.url` is
// prefixed with a fixed origin rather than passed as a relative reference
// because a target such as `//keys` would otherwise be read as a host name.
// URLSearchParams percent-decodes parameter *names* too, which matters: the
// JS SDK sends `api%2Dversion=…`.
function parseTarget(req) {
  const url = new URL(`http://emulator${req.url}`);
  return { path: url.pathname, query: url.searchParams };
}

// Splits a path into percent-decoded segments after the leading '/'. Empty
// segments are kept: `/keys/k//unwrapkey` has an empty version on purpose.
function pathSegments(path, onError) {
  try {
    return path.split('/').slice(1).map(decodeURIComponent);
  } catch {
    throw onError(`The request path ${path} is not validly percent-encoded.`);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, { error: { code: 'RequestTooLarge', message: 'Request body too large.' } }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// Parses a JSON object body; `onError(message)` builds the protocol-specific
// error to throw. An empty body is an empty object, as for `POST …/rotate`.
function parseJsonObject(buf, onError) {
  if (buf.length === 0) return {};
  let value;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw onError(`The request body is not valid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw onError('The request body must be a JSON object.');
  }
  return value;
}

function sendJson(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  const out = { ...headers };
  if (payload) {
    out['Content-Type'] = 'application/json; charset=utf-8';
  }
  out['Content-Length'] = Buffer.byteLength(payload);
  res.writeHead(status, out);
  res.end(payload);
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = { parseTarget, pathSegments, readBody, parseJsonObject, sendJson, delay };

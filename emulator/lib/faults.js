'use strict';
// Fault injection. A rule selects requests (by server, method and a path
// regex) and does one thing to the next `times` of them: delay, answer with an
// error status (optionally with Retry-After), drop the connection, or answer
// 200 with a body that is not valid JSON. Rules are checked in the order they
// were added and the first live match fires; an exhausted rule disappears.
// Faults apply before anything else, authentication included, as a gateway in
// front of the real service would. They live in memory only: a restart clears
// them, so a test never inherits another test's faults.

const { badParameter } = require('./errors');
const { sendJson, delay } = require('./http');

const TARGETS = ['vault', 'token'];
const ACTIONS = ['latency', 'status', 'drop', 'malformed'];

function validInt(value, min, max) {
  return Number.isSafeInteger(value) && value >= min && value <= max;
}

function parseRule(spec) {
  if (!TARGETS.includes(spec.target)) throw badParameter(`"target" must be one of ${TARGETS.join(', ')}.`);
  if (!ACTIONS.includes(spec.action)) throw badParameter(`"action" must be one of ${ACTIONS.join(', ')}.`);
  const rule = { target: spec.target, action: spec.action };
  if (spec.method !== undefined) {
    if (typeof spec.method !== 'string') throw badParameter('"method" must be a string.');
    rule.method = spec.method.toUpperCase();
  }
  if (spec.path !== undefined) {
    if (typeof spec.path !== 'string') throw badParameter('"path" must be a regular expression string.');
    try {
      rule.path = spec.path;
      rule.regex = new RegExp(spec.path);
    } catch (err) {
      throw badParameter(`"path" is not a valid regular expression: ${err.message}`);
    }
  }
  if (spec.times !== undefined) {
    if (!validInt(spec.times, 1, 1e9)) throw badParameter('"times" must be a positive integer.');
    rule.remaining = spec.times;
  }
  const latency = spec.latency_ms === undefined ? 0 : spec.latency_ms;
  if (!validInt(latency, 0, 600000)) throw badParameter('"latency_ms" must be an integer from 0 to 600000.');
  if (spec.action === 'latency' && latency === 0) throw badParameter('A "latency" fault needs "latency_ms" > 0.');
  rule.latency_ms = latency;
  if (spec.action === 'status') {
    if (!validInt(spec.status, 400, 599)) throw badParameter('A "status" fault needs "status" from 400 to 599.');
    rule.status = spec.status;
    if (spec.retry_after !== undefined) {
      if (!validInt(spec.retry_after, 0, 3600)) throw badParameter('"retry_after" must be 0-3600 seconds.');
      rule.retry_after = spec.retry_after;
    }
  }
  return rule;
}

// Error bodies in each protocol's own shape, so clients parse them as they
// would a real failure.
function vaultFaultBody(status) {
  const code = { 429: 'Throttled', 500: 'InternalServerError', 502: 'BadGateway', 503: 'ServiceUnavailable' }[status]
    || 'EmulatedFault';
  return { error: { code, message: `Injected HTTP ${status} by the Key Vault emulator.` } };
}

function tokenFaultBody(status) {
  const error = { 429: 'too_many_requests', 500: 'unknown' }[status] || 'emulated_fault';
  return { error, error_description: `Injected HTTP ${status} by the Key Vault emulator.` };
}

class Faults {
  constructor() {
    this.rules = [];
    this.nextId = 1;
  }

  add(spec) {
    const rule = { id: this.nextId++, ...parseRule(spec) };
    this.rules.push(rule);
    return this.describe(rule);
  }

  list() {
    return this.rules.map((rule) => this.describe(rule));
  }

  describe(rule) {
    const { regex, ...visible } = rule;
    return visible;
  }

  remove(id) {
    const before = this.rules.length;
    this.rules = this.rules.filter((r) => r.id !== id);
    return this.rules.length !== before;
  }

  clear() {
    this.rules = [];
  }

  // Finds and consumes the rule for this request, if any.
  take(target, method, path) {
    const rule = this.rules.find((r) => r.target === target
      && (!r.method || r.method === method) && (!r.regex || r.regex.test(path)));
    if (!rule) return null;
    if (rule.remaining !== undefined) {
      rule.remaining -= 1;
      if (rule.remaining === 0) this.remove(rule.id);
    }
    return rule;
  }

  // Carries out `rule` on the exchange. Returns true when the fault answered
  // (or dropped) the request, false when processing should continue.
  static async apply(rule, req, res) {
    if (rule.latency_ms) await delay(rule.latency_ms);
    switch (rule.action) {
      case 'latency':
        return false;
      case 'drop':
        req.socket.destroy();
        return true;
      case 'malformed': {
        // A complete HTTP response whose JSON is cut short, as from a broken proxy.
        const body = '{"error":{"code":"Emul';
        res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': body.length });
        res.end(body);
        return true;
      }
      default: {
        const headers = rule.retry_after === undefined ? {} : { 'Retry-After': String(rule.retry_after) };
        const body = rule.target === 'vault' ? vaultFaultBody(rule.status) : tokenFaultBody(rule.status);
        sendJson(res, rule.status, body, headers);
        return true;
      }
    }
  }
}

module.exports = { Faults };

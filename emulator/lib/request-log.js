'use strict';
// In-memory log of vault and token requests, for tests that assert what a
// client sent ("exactly one unwrapkey", "retried after 429").
//
// Entries are built from a fixed list of fields: method, path, query, status,
// caller identity, fault. Headers and bodies are never recorded, so a bearer
// token, the X-IDENTITY-HEADER secret or a key value cannot end up in the log.
// (Query strings carry only api-version, paging and identity selectors.)

const MAX_ENTRIES = 10000;

class RequestLog {
  // `echo`: a stream to also print each entry to (the --verbose flag).
  constructor(echo) {
    this.entries = [];
    this.seq = 0;
    this.echo = echo;
  }

  add({ server, method, path, query, status, identity, fault, started }) {
    const entry = {
      seq: ++this.seq,
      time: new Date(started).toISOString(),
      server,
      method,
      path,
      query,
      status,
      identity,
      fault,
      duration_ms: Date.now() - started,
    };
    this.entries.push(entry);
    if (this.entries.length > MAX_ENTRIES) this.entries.shift();
    if (this.echo) this.echo.write(`${JSON.stringify(entry)}\n`);
  }

  // Entries with seq > since, so a test can take a mark and read what followed.
  list(since = 0) {
    return this.entries.filter((e) => e.seq > since);
  }

  clear() {
    this.entries = [];
  }

  // Registers an exchange; the entry is written when the response closes, so
  // the final status is known. A dropped connection logs status null.
  track(server, req, res, target, ctx) {
    const started = Date.now();
    res.on('close', () => this.add({
      server,
      method: req.method,
      path: target.path,
      query: Object.fromEntries(target.query),
      status: res.headersSent ? res.statusCode : null,
      identity: ctx.identity || null,
      fault: ctx.fault || null,
      started,
    }));
  }
}

module.exports = { RequestLog };

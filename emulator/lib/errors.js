'use strict';
// One error type for every server in the emulator. Models throw it; the HTTP
// layers catch it and write `status`, `headers` and the JSON `body` verbatim.
// The body shape differs per protocol (Key Vault, IMDS, App Service, admin),
// so the constructor takes the finished body instead of a code and message.

class HttpError extends Error {
  constructor(status, body, headers = {}) {
    super(typeof body === 'object' ? JSON.stringify(body) : String(body));
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

// Key Vault error body: {"error":{"code","message","innererror":{"code"}}}.
// The admin API uses the same shape so that one parser serves both.
function serviceError(status, code, message, innerCode) {
  const error = { code, message };
  if (innerCode) error.innererror = { code: innerCode };
  return new HttpError(status, { error });
}

const badParameter = (message) => serviceError(400, 'BadParameter', message);

module.exports = { HttpError, serviceError, badParameter };

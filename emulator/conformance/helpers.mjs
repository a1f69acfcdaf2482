// Shared by the conformance tests: start/stop the emulator on free ports with
// a temporary state directory, and talk to its admin API and vault directly.
// (Not a test file: node --test only picks up *.test.mjs here.)

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const EMULATOR = path.resolve(here, '..', 'kv-emulator.js');
export const OUTPUT_KEYS = ['vault_url', 'token_url', 'app_service_url', 'admin_url', 'ca_file'];

// Starts the emulator and resolves once it printed "ready". `stateDir` lets a
// test restart on the same state; by default a fresh temporary one is used.
export async function startEmulator({ args = [], stateDir } = {}) {
  const dir = stateDir || mkdtempSync(path.join(tmpdir(), 'kv-emulator-'));
  const child = spawn(process.execPath, [EMULATOR, '--port', '0', '--state-dir', dir, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });

  const lines = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`emulator did not get ready: ${stderr}`));
    }, 20000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.endsWith('ready\n')) {
        clearTimeout(timer);
        resolve(out.trimEnd().split('\n'));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`emulator exited with ${code}: ${stderr}`));
    });
  });
  const urls = Object.fromEntries(lines.filter((l) => l.includes('=')).map((l) => {
    const i = l.indexOf('=');
    return [l.slice(0, i), l.slice(i + 1)];
  }));
  const ca = readFileSync(urls.ca_file);

  return {
    lines,
    urls,
    ca,
    stateDir: dir,
    stderr: () => stderr,
    admin: (method, route, body) => adminRequest(urls.admin_url, method, route, body),
    vault: (method, route, options) => vaultRequest(urls.vault_url, ca, method, route, options),
    // Stops the process; removes the state directory unless `keepState`.
    async stop({ keepState = false } = {}) {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      if (!keepState && !stateDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function adminRequest(adminUrl, method, route, body) {
  const res = await fetch(`${adminUrl}${route}`, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

// A raw HTTPS request to the vault. `token` adds a bearer header; `body` may
// be an object (sent as JSON) or a string (sent as is). The response body is
// parsed as JSON when possible and kept as text otherwise.
export function vaultRequest(vaultUrl, ca, method, route, { token, body, headers = {} } = {}) {
  const url = new URL(route, vaultUrl);
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(url, {
      method,
      ca,
      agent: false,
      headers: {
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...(payload !== undefined ? { 'Content-Type': 'application/json' } : {}),
        ...headers,
      },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        let parsed = text;
        try { parsed = text ? JSON.parse(text) : undefined; } catch { /* keep the raw text */ }
        resolve({ status: res.statusCode, headers: res.headers, body: parsed, text });
      });
    });
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

// Fetches a token from the IMDS-style endpoint for the identity with `clientId`.
export async function imdsToken(tokenUrl, clientId) {
  const url = `${tokenUrl}?api-version=2018-02-01&resource=${encodeURIComponent('https://vault.azure.net')}`
    + `&client_id=${clientId}`;
  const res = await fetch(url, { headers: { Metadata: 'true' } });
  if (res.status !== 200) throw new Error(`token request failed: ${res.status} ${await res.text()}`);
  return (await res.json()).access_token;
}

// Creates an identity through the admin API and returns its record.
export async function createIdentity(emu, name, permissions) {
  const res = await emu.admin('POST', '/identities', { name, permissions });
  if (res.status !== 200) throw new Error(`create identity failed: ${JSON.stringify(res.body)}`);
  return res.body;
}

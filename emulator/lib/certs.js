'use strict';
// TLS material for the vault endpoint. Node cannot issue X.509 certificates,
// so this shells out to the openssl CLI. The CA is created once and reused
// across restarts (clients may have pinned its file path, e.g. through
// NODE_EXTRA_CA_CERTS or curl's CURLOPT_CAINFO); the server certificate is
// re-issued on every start so that a changed --hostname is always covered.

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');

function openssl(args, cwd) {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const detail = err.stderr ? err.stderr.toString().trim() : err.message;
    throw new Error(`openssl ${args[0]} failed: ${detail}`);
  }
}

function ensureCa(dir) {
  const caFile = path.join(dir, 'ca.pem');
  const caKey = path.join(dir, 'ca-key.pem');
  if (fs.existsSync(caFile) && fs.existsSync(caKey)) return { caFile, caKey };
  openssl([
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '3650',
    '-subj', '/CN=cmk_storage Key Vault emulator CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout', caKey, '-out', caFile,
  ], dir);
  fs.chmodSync(caKey, 0o600);
  return { caFile, caKey };
}

// Returns { caFile, key, cert } where key/cert are PEM strings for https.createServer.
function ensureCertificates(dir, hostname) {
  const { caFile, caKey } = ensureCa(dir);
  const keyFile = path.join(dir, 'server-key.pem');
  const csrFile = path.join(dir, 'server.csr');
  const certFile = path.join(dir, 'server.pem');
  const extFile = path.join(dir, 'server-ext.cnf');

  // *.vault.azure.net lets a client map a realistic vault host name to
  // 127.0.0.1 in /etc/hosts and keep the SDK's challenge-resource check on.
  const names = new Set(['localhost', hostname, '*.vault.azure.net']);
  const san = [...names].map((n) => `DNS:${n}`).concat('IP:127.0.0.1').join(',');
  fs.writeFileSync(extFile, [
    `subjectAltName=${san}`,
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth',
    '',
  ].join('\n'));

  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-subj', `/CN=${hostname}`,
    '-keyout', keyFile, '-out', csrFile], dir);
  openssl(['x509', '-req', '-sha256', '-days', '825', '-in', csrFile,
    '-CA', caFile, '-CAkey', caKey, '-set_serial', `0x${crypto.randomBytes(16).toString('hex')}`,
    '-extfile', extFile, '-out', certFile], dir);
  fs.chmodSync(keyFile, 0o600);
  fs.rmSync(csrFile);
  fs.rmSync(extFile);

  return { caFile, key: fs.readFileSync(keyFile), cert: fs.readFileSync(certFile) };
}

module.exports = { ensureCertificates };

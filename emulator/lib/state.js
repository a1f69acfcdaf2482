'use strict';
// Persistent state: one JSON document in the state directory holding the vault
// configuration, identities, keys (private keys included, as PKCS#8 PEM) and
// the hashes of issued tokens. It is rewritten after every change so that a
// killed emulator restarts with exactly what the clients last saw; the file is
// small, so whole-file rewrites are cheaper than anything cleverer.

const fs = require('node:fs');
const path = require('node:path');

const FORMAT = 1;

function emptyState() {
  return { format: FORMAT, config: {}, identities: {}, keys: {}, deletedKeys: {}, tokens: {} };
}

// One emulator per state directory: a second one would overwrite the first's
// state and certificates. The lock file holds the owner's pid; a lock whose
// process is gone (killed with SIGKILL, say) is taken over.
function lockDirectory(dir) {
  const lockFile = path.join(dir, 'lock');
  for (;;) {
    try {
      fs.writeFileSync(lockFile, String(process.pid), { flag: 'wx' });
      process.on('exit', () => fs.rmSync(lockFile, { force: true }));
      return;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
    }
    const owner = Number(fs.readFileSync(lockFile, 'utf8'));
    if (owner && isAlive(owner)) throw new Error(`${dir} is in use by another emulator (pid ${owner})`);
    fs.rmSync(lockFile, { force: true });
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

class StateStore {
  constructor(dir) {
    lockDirectory(dir);
    this.file = path.join(dir, 'state.json');
    this.data = this.load();
  }

  load() {
    let text;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if (err.code === 'ENOENT') return emptyState();
      throw err;
    }
    const data = JSON.parse(text);
    if (data.format !== FORMAT) {
      throw new Error(`${this.file}: unsupported state format ${data.format} (expected ${FORMAT})`);
    }
    return { ...emptyState(), ...data };
  }

  // Write-to-temp, fsync, rename: a crash leaves either the old or the new
  // document, never a torn one. Mode 0600 because it holds private keys.
  save() {
    const tmp = `${this.file}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(this.data, null, 1));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
  }
}

module.exports = { StateStore };

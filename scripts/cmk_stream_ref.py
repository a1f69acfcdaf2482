#!/usr/bin/env python3
"""Independent reference implementation of docs/stream-format.md.

Written from the document, not from the C code, to check that the document
describes the bytes cmk_storage writes.  Needs python3-cryptography.

  cmk_stream_ref.py kat                      print length and SHA-256 of the
                                             documented known-answer vector
  cmk_stream_ref.py decrypt DEKFILE FILE     decrypt a stream with the raw
                                             32-byte DEK (test use only) to
                                             stdout; exit 3 if not authentic
"""
import hashlib
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"CMKSTRM\0"
FIXED = 100
TRAILER = 48
TAG = 16
PURPOSE_LABEL = {1: b"cmk_storage/v1/wal-archive", 2: b"cmk_storage/v1/base-backup"}


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def nonce(kind, index):
    return bytes([kind, 0, 0, 0]) + struct.pack(">Q", index)


def encode(subkey, plain, purpose, chunk, sysid, dek_id, salt, set_id, alg, wrapped, kid, name):
    hlen = FIXED + len(wrapped) + len(kid) + len(name) + TRAILER
    head = (MAGIC + struct.pack(">HHBBH", 1, hlen, purpose, 1, 0) +
            struct.pack(">IQ", chunk, sysid) + dek_id + salt + set_id +
            struct.pack(">HHHH", alg, len(wrapped), len(kid), len(name)) +
            wrapped + kid + name)
    head += hashlib.sha256(head).digest()
    gcm = AESGCM(hkdf(subkey, salt, b"cmk_storage/v1/stream-file-key"))
    head += gcm.encrypt(nonce(2, 0), b"", head)
    out = [head]
    full = len(plain) // chunk          # full chunks are never final
    for i in range(full):
        out.append(gcm.encrypt(nonce(0, i), plain[i * chunk:(i + 1) * chunk], b""))
    out.append(gcm.encrypt(nonce(1, full), plain[full * chunk:], b""))
    return b"".join(out)


def decode(data, dek):
    if data[:8] != MAGIC:
        raise ValueError("not a stream")
    version, hlen, purpose, suite, _ = struct.unpack(">HHBBH", data[8:16])
    assert version == 1 and suite == 1
    chunk, = struct.unpack(">I", data[16:20])
    salt = data[44:76]
    head = data[:hlen]
    if hashlib.sha256(head[:hlen - TRAILER]).digest() != head[hlen - TRAILER:hlen - TAG]:
        raise ValueError("header checksum")
    subkey = hkdf(dek, None, PURPOSE_LABEL[purpose])
    gcm = AESGCM(hkdf(subkey, salt, b"cmk_storage/v1/stream-file-key"))
    gcm.decrypt(nonce(2, 0), head[hlen - TAG:], head[:hlen - TAG])
    body = data[hlen:]
    rec = chunk + TAG
    out = []
    i = 0
    while len(body) >= rec:
        out.append(gcm.decrypt(nonce(0, i), body[:rec], b""))
        body = body[rec:]
        i += 1
    if len(body) < TAG:
        raise ValueError("truncated")
    out.append(gcm.decrypt(nonce(1, i), body, b""))
    return b"".join(out)


def kat():
    plain = bytes((i * 7 + 3) & 0xFF for i in range(600))
    return encode(bytes(range(32)), plain, purpose=1, chunk=256,
                  sysid=0x0102030405060708,
                  dek_id=bytes(range(0x70, 0x80)), salt=bytes(range(0x40, 0x60)),
                  set_id=bytes(range(0x60, 0x70)), alg=1, wrapped=b"\xa5" * 32,
                  kid=b"file:sha256:kat", name=b"000000010000000000000001")


def main():
    if sys.argv[1:2] == ["kat"]:
        data = kat()
        print(len(data), hashlib.sha256(data).hexdigest())
        return 0
    if sys.argv[1:2] == ["decrypt"] and len(sys.argv) == 4:
        dek = open(sys.argv[2], "rb").read()
        try:
            plain = decode(open(sys.argv[3], "rb").read(), dek)
        except (InvalidTag, ValueError) as e:
            print("not authentic: %r" % e, file=sys.stderr)
            return 3
        sys.stdout.buffer.write(plain)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

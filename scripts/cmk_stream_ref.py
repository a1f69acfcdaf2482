#!/usr/bin/env python3
"""Independent reference implementation of docs/stream-format.md.

Written from the document, not from the C code, to check that the document
describes the bytes cmk_storage writes.  Needs python3-cryptography.

  cmk_stream_ref.py kat                      print length and SHA-256 of the
                                             documented known-answer vector
  cmk_stream_ref.py decrypt DEKFILE FILE     decrypt a stream with the raw
                                             32-byte DEK (test use only) to
                                             stdout; exit 3 if not authentic
  cmk_stream_ref.py dek-id DEKFILE           print the DEK identifier of a raw
                                             32-byte DEK
  cmk_stream_ref.py encrypt PUBKEY DEKFILE NAME [--purpose wal|backup]
        [--sysid N] [--set-id HEX] [--salt HEX] [--chunk N] [--claim-dek-id HEX]
                                             encrypt stdin to stdout as a stream
                                             of that name under the raw DEK,
                                             wrapped (RSA-OAEP-256) with the
                                             public key in PUBKEY (PEM); the
                                             kid is derived from that key;
                                             --claim-dek-id writes another DEK
                                             identifier than the DEK's own

"encrypt" needs nothing secret: it is what anyone holding the public key
encryption key can do, and the tests use it to forge archives and backups
that cmk_restore must refuse unless the DEK identifier is the trusted one.
"""
import argparse
import hashlib
import hmac
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
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


def dek_identifier(dek):
    return hmac.new(dek, b"cmk_storage/v1/dek-identifier", hashlib.sha256).digest()[:16]


def wrap(public_pem, dek):
    """RSA-OAEP-256 wrap (wrap algorithm 1) and the kid of a key file."""
    pub = serialization.load_pem_public_key(public_pem)
    wrapped = pub.encrypt(dek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                            algorithm=hashes.SHA256(), label=None))
    spki = pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return wrapped, b"file:sha256:" + hashlib.sha256(spki).hexdigest().encode()


def encrypt(argv):
    ap = argparse.ArgumentParser(prog="cmk_stream_ref.py encrypt")
    ap.add_argument("pubkey")
    ap.add_argument("dekfile")
    ap.add_argument("name")
    ap.add_argument("--purpose", choices=["wal", "backup"], default="wal")
    ap.add_argument("--sysid", type=int, default=0)
    ap.add_argument("--set-id", default="00" * 16)
    ap.add_argument("--salt", default=None)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--claim-dek-id", default=None)
    a = ap.parse_args(argv)
    dek = open(a.dekfile, "rb").read()
    purpose = 1 if a.purpose == "wal" else 2
    wrapped, kid = wrap(open(a.pubkey, "rb").read(), dek)
    salt = bytes.fromhex(a.salt) if a.salt else os.urandom(32)
    data = encode(hkdf(dek, None, PURPOSE_LABEL[purpose]), sys.stdin.buffer.read(),
                  purpose=purpose, chunk=a.chunk, sysid=a.sysid, dek_id=(bytes.fromhex(a.claim_dek_id) if a.claim_dek_id
                          else dek_identifier(dek)),
                  salt=salt, set_id=bytes.fromhex(a.set_id), alg=1, wrapped=wrapped,
                  kid=kid, name=a.name.encode())
    sys.stdout.buffer.write(data)
    return 0


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
    if sys.argv[1:2] == ["dek-id"] and len(sys.argv) == 3:
        print(dek_identifier(open(sys.argv[2], "rb").read()).hex())
        return 0
    if sys.argv[1:2] == ["encrypt"]:
        return encrypt(sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

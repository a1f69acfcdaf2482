#!/usr/bin/env python3
"""Independent reference decoder of docs/tuple-format.md (format 3) and
docs/nonce-epochs.md (format 2).

Written from the documents, not from the C code, to check that they
describe the bytes cmk_heap writes.  Needs python3-cryptography.  Reads a
relation file of a table whose columns are int4 and short, inline text
(no TOAST), and prints every normal line pointer's tuple, decrypted:

  cmk_tuple_ref.py DEKFILE EPOCHFILE RELFILE COLUMNS

  DEKFILE    the raw 32-byte DEK (test use only)
  EPOCHFILE  the cluster's nonce epoch table, $PGDATA/cmk_storage/nonce_epochs
  COLUMNS    comma-separated types, each int4 or text, e.g. int4,int4,text

EPOCHFILE must be sealed under this DEK (its HMAC checks out, and it names
this DEK's identifier, HMAC-SHA256(DEK, "cmk_storage/v1/dek-identifier"),
docs/control-file.md), and every nonce epoch a tuple names must be in its
authenticated part with this DEK's tag: the identifier's first 4 bytes.

Output: one line per tuple, "block,offset|v1|v2|...", NULL as \\N.
"""
import hashlib
import hmac
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

BLCKSZ = 8192
EPOCH_MAGIC = b"CMKEPOCH"
EPOCH_VERSION = 2
EPOCH_HEADER = 48


def crc32c(data):
    """CRC-32C (Castagnoli), as PostgreSQL's pg_crc32c."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = crc32c_table()


def read_epochs(data, dek, dek_id):
    """{epoch id: (DEK tag, 8-byte nonce prefix)} from a nonce_epochs file:
    the entries of its authenticated part, after checking the MAC."""
    if len(data) < EPOCH_HEADER + 32 + 8 or data[:8] != EPOCH_MAGIC:
        raise ValueError("not a nonce_epochs file")
    version, n, flags, reserved = struct.unpack_from(">IIII", data, 8)
    if version != EPOCH_VERSION:
        raise ValueError("nonce_epochs format %d, not %d" % (version, EPOCH_VERSION))
    auth_end = EPOCH_HEADER + 16 * n
    if len(data) < auth_end + 32 + 8:
        raise ValueError("nonce_epochs file is truncated")
    pending = struct.unpack_from(">I", data, auth_end + 32)[0]
    end = auth_end + 32 + 4 + 16 * pending
    if len(data) != end + 4:
        raise ValueError("nonce_epochs file has %d bytes, not %d" % (len(data), end + 4))
    if struct.unpack_from(">I", data, end)[0] != crc32c(data[:end]):
        raise ValueError("nonce_epochs CRC-32C mismatch")
    if flags != 1 or reserved != 0:
        raise ValueError("nonce_epochs file is not sealed")
    if data[32:48] != dek_id:
        raise ValueError("nonce_epochs file names another DEK")
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"cmk_storage/v1/nonce-epochs").derive(dek)
    mac = hmac.new(mac_key, data[:auth_end], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[auth_end:auth_end + 32]):
        raise ValueError("nonce_epochs HMAC mismatch")
    epochs = {}
    last = -1
    for j in range(n):
        eid, reserved = struct.unpack_from(">HH", data, EPOCH_HEADER + 16 * j)
        if reserved != 0 or eid <= last:
            raise ValueError("nonce_epochs entry %d is malformed" % j)
        last = eid
        at = EPOCH_HEADER + 16 * j
        epochs[eid] = (data[at + 4:at + 8], data[at + 8:at + 16])
    return epochs


def keystream(ecb, nonce, region, start, length):
    """Bytes [start, start+length) of region `region` under `nonce`."""
    first, last = start // 16, (start + length - 1) // 16
    blocks = b"".join(nonce + struct.pack(">HH", region, b) for b in range(first, last + 1))
    ks = ecb.update(blocks)
    return ks[start - first * 16:start - first * 16 + length]


def trailer(tup, natts, epochs, dek_tag):
    """(nonces, nonce index per attribute, data end) from the trailer."""
    n = len(tup)
    flags = tup[n - 1]
    if flags & 0xE0 != 0xA0:
        raise ValueError("not a format 3 tuple (last byte 0x%02X)" % flags)
    k = (flags & 0x07) + 1
    short = bool(flags & 0x10)
    if flags & 0x08:
        raise ValueError("external references are not handled here")

    def nonce(epoch_id, counter):
        if epoch_id not in epochs:
            raise ValueError("names nonce epoch %d, which is not in the nonce_epochs file" % epoch_id)
        tag, prefix = epochs[epoch_id]
        if tag != dek_tag:
            raise ValueError("nonce epoch %d belongs to DEK tag %s, not this DEK's %s"
                             % (epoch_id, tag.hex(), dek_tag.hex()))
        return prefix + counter

    epoch0 = struct.unpack_from(">H", tup, n - 7)[0]
    nonces = [nonce(epoch0, tup[n - 5:n - 1])]
    more_len = (k - 1) * (4 if short else 6)
    more = tup[n - 7 - more_len:n - 7]
    for j in range(k - 1):
        if short:
            nonces.append(nonce(epoch0, more[4 * j:4 * j + 4]))
        else:
            nonces.append(nonce(struct.unpack_from(">H", more, 6 * j)[0], more[6 * j + 2:6 * j + 6]))
    end = n - 7 - more_len
    if k == 1:
        map_len, which = 0, [0] * natts
    elif k == 2:
        map_len = (natts + 7) // 8
        m = tup[end - map_len:end]
        which = [(m[i // 8] >> (i % 8)) & 1 for i in range(natts)]
    else:
        map_len = (natts + 1) // 2
        m = tup[end - map_len:end]
        which = [(m[i // 2] >> (4 * (i % 2))) & 0x0F for i in range(natts)]
    if any(w >= k for w in which):
        raise ValueError("nonce map names a nonce the tuple does not have")
    return nonces, which, end - map_len


def decode(ecb, tup, cols, epochs, dek_tag):
    infomask2, infomask, hoff = struct.unpack_from("<HHB", tup, 18)
    natts = infomask2 & 0x07FF
    nonces, which, data_end = trailer(tup, natts, epochs, dek_tag)
    # the fixed-width prefix: attributes before the first non-fixed one,
    # at their nominal offsets (as if no attribute were null)
    nominal, off = [], 0
    for c in cols:
        if c != "int4":
            break
        off = (off + 3) & ~3
        nominal.append(off)
        off += 4
    values, off = [], hoff
    for i in range(len(cols)):
        if i >= natts or ((infomask & 0x0001) and not (tup[23 + i // 8] >> (i % 8)) & 1):
            values.append("\\N")
            continue
        nonce = nonces[which[i]]
        if cols[i] == "int4":
            off = (off + 3) & ~3
            region, pos = (0, nominal[i]) if i < len(nominal) else (i + 1, 0)
            plain = bytes(a ^ b for a, b in zip(tup[off:off + 4], keystream(ecb, nonce, region, pos, 4)))
            values.append(str(struct.unpack("<i", plain)[0]))
            off += 4
        else:
            if tup[off] & 0x01:
                hdr, size = 1, tup[off] >> 1
            else:
                off = (off + 3) & ~3
                hdr, size = 4, struct.unpack_from("<I", tup, off)[0] >> 2
            body = tup[off + hdr:off + size]
            plain = bytes(a ^ b for a, b in zip(body, keystream(ecb, nonce, i + 1, 0, len(body))))
            values.append(plain.decode("utf-8"))
            off += size
        if off > data_end:
            raise ValueError("attribute runs into the trailer")
    return values


def main():
    dek = open(sys.argv[1], "rb").read()
    dek_id = hmac.new(dek, b"cmk_storage/v1/dek-identifier", hashlib.sha256).digest()[:16]
    dek_tag = dek_id[:4]
    epochs = read_epochs(open(sys.argv[2], "rb").read(), dek, dek_id)
    rel = open(sys.argv[3], "rb").read()
    cols = sys.argv[4].split(",")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"cmk_storage/v1/tuple").derive(dek)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    for blk in range(len(rel) // BLCKSZ):
        page = rel[blk * BLCKSZ:(blk + 1) * BLCKSZ]
        pd_lower = struct.unpack_from("<H", page, 12)[0]
        for lp in range((pd_lower - 24) // 4):
            v = struct.unpack_from("<I", page, 24 + 4 * lp)[0]
            lp_off, lp_flags, lp_len = v & 0x7FFF, (v >> 15) & 3, v >> 17
            if lp_flags != 1:
                continue
            try:
                vals = decode(ecb, page[lp_off:lp_off + lp_len], cols, epochs, dek_tag)
            except ValueError as e:
                sys.exit("tuple (%d,%d): %s" % (blk, lp + 1, e))
            print("%d,%d|%s" % (blk, lp + 1, "|".join(vals)))


if __name__ == "__main__":
    main()

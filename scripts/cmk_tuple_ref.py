#!/usr/bin/env python3
"""Independent reference decoder of docs/tuple-format.md (format 2).

Written from the document, not from the C code, to check that the document
describes the bytes cmk_heap writes.  Needs python3-cryptography.  Reads a
relation file of a table whose columns are int4 and short, inline text
(no TOAST), and prints every normal line pointer's tuple, decrypted:

  cmk_tuple_ref.py DEKFILE RELFILE COLUMNS

  DEKFILE  the raw 32-byte DEK (test use only)
  COLUMNS  comma-separated types, each int4 or text, e.g. int4,int4,text

Output: one line per tuple, "block,offset|v1|v2|...", NULL as \\N.
"""
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

BLCKSZ = 8192
VERSION = 0xC2


def keystream(ecb, nonce, region, start, length):
    """Bytes [start, start+length) of region `region` under `nonce`."""
    first, last = start // 16, (start + length - 1) // 16
    blocks = b"".join(nonce + struct.pack(">HH", region, b) for b in range(first, last + 1))
    ks = ecb.update(blocks)
    return ks[start - first * 16:start - first * 16 + length]


def trailer(tup, natts):
    """(nonces, nonce index per attribute, data end) from the trailer."""
    n = len(tup)
    if tup[n - 1] != VERSION:
        raise ValueError("not a format 2 tuple")
    flags = tup[n - 6]
    k = (flags & 0x0F) + 1
    short = bool(flags & 0x20)
    if flags & 0x10:
        raise ValueError("external references are not handled here")
    nonce0 = tup[n - 18:n - 6]
    more_len = (k - 1) * (4 if short else 12)
    more = tup[n - 18 - more_len:n - 18]
    nonces = [nonce0]
    for j in range(k - 1):
        if short:
            nonces.append(nonce0[:8] + more[4 * j:4 * j + 4])
        else:
            nonces.append(more[12 * j:12 * j + 12])
    if k == 1:
        map_len, which = 0, [0] * natts
    elif k == 2:
        map_len = (natts + 7) // 8
        m = tup[n - 18 - more_len - map_len:n - 18 - more_len]
        which = [(m[i // 8] >> (i % 8)) & 1 for i in range(natts)]
    else:
        map_len = (natts + 1) // 2
        m = tup[n - 18 - more_len - map_len:n - 18 - more_len]
        which = [(m[i // 2] >> (4 * (i % 2))) & 0x0F for i in range(natts)]
    return nonces, which, n - 18 - more_len - map_len


def decode(ecb, tup, cols):
    infomask2, infomask, hoff = struct.unpack_from("<HHB", tup, 18)
    natts = infomask2 & 0x07FF
    nonces, which, data_end = trailer(tup, natts)
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
    rel = open(sys.argv[2], "rb").read()
    cols = sys.argv[3].split(",")
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
            vals = decode(ecb, page[lp_off:lp_off + lp_len], cols)
            print("%d,%d|%s" % (blk, lp + 1, "|".join(vals)))


if __name__ == "__main__":
    main()

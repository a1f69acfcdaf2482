#!/usr/bin/env python3
"""Independent reference decoder of docs/io-layer.md (cluster encryption).

Written from the document, not from the C code, to check that the document
describes the bytes the I/O layer writes.  Needs python3-cryptography.

  cmk_page_ref.py rel DEKFILE FILE DB RELNODE FORK SEGNO TEMP OUTFILE
  cmk_page_ref.py wal DEKFILE FILE OUTFILE

  DEKFILE  the raw 32-byte DEK (test use only)
  FILE     a relation segment file or a WAL segment
  DB, RELNODE, SEGNO, TEMP   the file's identity (docs/io-layer.md, tweak)
  FORK     0 main, 1 fsm, 2 vm, 3 init

Writes FILE decrypted to OUTFILE (the marker cleared, headers as stored) and
prints "pages=N encrypted=E zero=Z plain=P".
"""
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PAGE = 8192
RELSEG_SIZE = 131072
PD_HEADER = 24
PD_FLAGS_OFF = 10
PD_MARKER = 0x8000
XLOG_PAGE_MAGIC = 0xD110
XLP_LONG_HEADER = 0x0002
XLP_MARKER = 0x4000
REL_LABEL = b"cmk_storage/v1/cluster-relation-xts"
WAL_LABEL = b"cmk_storage/v1/cluster-wal-xts"


def xts_key(dek, label):
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
                info=label).derive(dek)


def xts_decrypt(key, tweak, data):
    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
    return d.update(data) + d.finalize()


def decode_rel(key, page, db, relnode, fork, blkno, temp):
    if page == bytes(PAGE):
        return page, "zero"
    flags = struct.unpack_from("<H", page, PD_FLAGS_OFF)[0]
    if not flags & PD_MARKER:
        return page, "plain"
    tweak = struct.pack("<IIIBB2x", db, relnode, blkno, fork, temp)
    body = xts_decrypt(key, tweak, page[PD_HEADER:])
    header = bytearray(page[:PD_HEADER])
    struct.pack_into("<H", header, PD_FLAGS_OFF, flags & ~PD_MARKER)
    return bytes(header) + body, "encrypted"


def decode_wal(key, page):
    magic, info, tli, pageaddr = struct.unpack_from("<HHIQ", page, 0)
    if magic != XLOG_PAGE_MAGIC:
        return page, "zero" if page == bytes(PAGE) else "plain"
    if not info & XLP_MARKER:
        return page, "plain"
    hdr = 40 if info & XLP_LONG_HEADER else 24
    tweak = struct.pack("<QI4x", pageaddr, tli)
    body = xts_decrypt(key, tweak, page[hdr:])
    header = bytearray(page[:hdr])
    struct.pack_into("<H", header, 2, info & ~XLP_MARKER)
    return bytes(header) + body, "encrypted"


def main(argv):
    if len(argv) < 2 or argv[1] not in ("rel", "wal"):
        sys.exit(__doc__)
    dek = open(argv[2], "rb").read()
    data = open(argv[3], "rb").read()
    counts = {"encrypted": 0, "zero": 0, "plain": 0}
    out = []
    if argv[1] == "rel":
        db, relnode, fork, segno, temp = (int(x) for x in argv[4:9])
        outfile = argv[9]
        key = xts_key(dek, REL_LABEL)
    else:
        outfile = argv[4]
        key = xts_key(dek, WAL_LABEL)
    for i in range(len(data) // PAGE):
        page = data[i * PAGE:(i + 1) * PAGE]
        if argv[1] == "rel":
            page, kind = decode_rel(key, page, db, relnode, fork,
                                    segno * RELSEG_SIZE + i, temp)
        else:
            page, kind = decode_wal(key, page)
        counts[kind] += 1
        out.append(page)
    open(outfile, "wb").write(b"".join(out))
    print("pages=%d encrypted=%d zero=%d plain=%d" % (
        len(data) // PAGE, counts["encrypted"], counts["zero"],
        counts["plain"]))


if __name__ == "__main__":
    main(sys.argv)

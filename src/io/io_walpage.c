/*-------------------------------------------------------------------------
 *
 * io_walpage.c
 *		The encrypted WAL page (docs/io-layer.md, "WAL pages").
 *
 * The page header (XLogPageHeaderData, 24 bytes, or 40 with
 * XLP_LONG_HEADER) stays in clear; the rest of the 8 kB page is
 * AES-256-XTS under the WAL-page key with the 16-byte tweak
 *
 *	 xlp_pageaddr (LE64) | xlp_tli (LE32) | 0 0 0 0
 *
 * read from the clear header, never from the file name: recycled segments,
 * xlogtemp.*, RECOVERYXLOG and archive copies all decrypt.  xlp_info
 * carries CMK_XLP_ENCRYPTED (0x4000), outside XLP_ALL_FLAGS, so a server
 * without the layer stops at "invalid info bits" rather than replaying
 * ciphertext.  A page whose xlp_magic is not this major's XLOG_PAGE_MAGIC
 * (zero fill, never written) is stored and read as it is.
 *
 * XTS encrypts each 16-byte block under its own position, so when
 * XLogWrite rewrites a partly filled tail page, the blocks already flushed
 * encrypt to the same bytes: a reader racing the rewrite (walsender) still
 * decrypts the flushed prefix it reads.  (The ciphertext stealing ties only
 * the last 24 bytes of the page together.)
 *
 * Runs below fd.c: no allocation, no elog.  Key setup at start-up only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog_internal.h"

#include "io/io_int.h"
#include "io/io_layer.h"

static CmkXts wal_xts;

StaticAssertDecl(XLOG_BLCKSZ == CMK_IO_PAGE, "the I/O layer needs 8 kB WAL pages");
StaticAssertDecl((CMK_XLP_ENCRYPTED & XLP_ALL_FLAGS) == 0,
				 "the marker must be a flag stock PostgreSQL rejects");

void
cmk_walpage_init(const uint8 *key)
{
	if (!cmk_xts_init(&wal_xts, key))
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not initialise the WAL-page cipher")));
}

static size_t
header_size(const XLogPageHeaderData *h)
{
	return (h->xlp_info & XLP_LONG_HEADER) ? SizeOfXLogLongPHD : SizeOfXLogShortPHD;
}

static void
make_tweak(const XLogPageHeaderData *h, uint8 *tweak)
{
	uint64		addr = h->xlp_pageaddr;
	uint32		tli = h->xlp_tli;

	memset(tweak, 0, CMK_XTS_TWEAK_LEN);
	for (int i = 0; i < 8; i++)
		tweak[i] = (uint8) (addr >> (8 * i));
	for (int i = 0; i < 4; i++)
		tweak[8 + i] = (uint8) (tli >> (8 * i));
}

bool
cmk_walpage_encrypt(const uint8 *plain, uint8 *out)
{
	const XLogPageHeaderData *h = (const XLogPageHeaderData *) plain;
	XLogPageHeaderData *oh = (XLogPageHeaderData *) out;
	uint8		tweak[CMK_XTS_TWEAK_LEN];
	size_t		hdr;

	if (h->xlp_magic != XLOG_PAGE_MAGIC)
	{
		memcpy(out, plain, CMK_IO_PAGE);
		return true;
	}
	hdr = header_size(h);
	memcpy(out, plain, hdr);
	make_tweak(h, tweak);
	if (!cmk_xts_crypt(&wal_xts, true, tweak, plain + hdr, out + hdr,
					   CMK_IO_PAGE - hdr))
		return false;
	oh->xlp_info |= CMK_XLP_ENCRYPTED;
	return true;
}

/* In place.  Pages without magic and marker are left as they are. */
bool
cmk_walpage_decrypt(uint8 *page)
{
	XLogPageHeaderData *h = (XLogPageHeaderData *) page;
	uint8		tweak[CMK_XTS_TWEAK_LEN];
	size_t		hdr;

	if (h->xlp_magic != XLOG_PAGE_MAGIC || (h->xlp_info & CMK_XLP_ENCRYPTED) == 0)
		return true;
	hdr = header_size(h);
	make_tweak(h, tweak);
	if (!cmk_xts_crypt(&wal_xts, false, tweak, page + hdr, page + hdr,
					   CMK_IO_PAGE - hdr))
		return false;
	h->xlp_info &= ~CMK_XLP_ENCRYPTED;
	return true;
}

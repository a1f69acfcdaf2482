/*-------------------------------------------------------------------------
 *
 * io_relpage.c
 *		The encrypted relation page (docs/io-layer.md, "Relation pages").
 *
 * Bytes 0..23 (PageHeaderData) stay in clear: LSN, checksum, flags, the
 * line-pointer bounds, so that PostgreSQL's tools and the buffer manager's
 * sanity checks keep seeing a page.  Bytes 24..8191 are AES-256-XTS under
 * the relation-page key with the 16-byte tweak
 *
 *	 db oid (LE32) | relfilenode (LE32) | absolute block (LE32) | fork | temp | 0 0
 *
 * and pd_flags carries CMK_PD_ENCRYPTED (0x8000), a bit outside
 * PD_VALID_FLAG_BITS: a server without the layer rejects the page as
 * invalid instead of reading ciphertext as data (fail closed).  An all-zero
 * page (a new page md.c extends with) is stored as zeros; a page without the
 * marker (initdb's output, anything written before encryption was on) is
 * read as it is.
 *
 * With data checksums on, pd_checksum on disk is the checksum of the stored
 * (encrypted) page, so pg_checksums and base-backup verification work
 * without the key.  On read the stored checksum is verified, the page is
 * decrypted, and pd_checksum is set to the plaintext's checksum when the
 * stored one matched and to a value that cannot match otherwise, so that
 * PostgreSQL's own verification fails for a damaged page exactly as it does
 * today.
 *
 * Runs below fd.c: no allocation, no elog.  Key setup at start-up only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "io/io_int.h"
#include "io/io_layer.h"

static CmkXts rel_xts;
static bool rel_checksums = false;

StaticAssertDecl(BLCKSZ == CMK_IO_PAGE, "the I/O layer needs 8 kB pages");
StaticAssertDecl((CMK_PD_ENCRYPTED & PD_VALID_FLAG_BITS) == 0,
				 "the marker must be a flag stock PostgreSQL rejects");

/* Start-up: the 64-byte XTS key; the caller wipes its copy. */
void
cmk_relpage_init(const uint8 *key, bool checksums)
{
	if (!cmk_xts_init(&rel_xts, key))
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not initialise the relation-page cipher")));
	rel_checksums = checksums;
}

static inline void
put_le32(uint8 *p, uint32 v)
{
	p[0] = (uint8) v;
	p[1] = (uint8) (v >> 8);
	p[2] = (uint8) (v >> 16);
	p[3] = (uint8) (v >> 24);
}

static void
make_tweak(const CmkFileId *id, uint32 blkno, uint8 *tweak)
{
	memset(tweak, 0, CMK_XTS_TWEAK_LEN);
	put_le32(tweak, id->db);
	put_le32(tweak + 4, id->relnode);
	put_le32(tweak + 8, blkno);
	tweak[12] = id->fork;
	tweak[13] = id->temp;
}

static bool
all_zero(const uint8 *page)
{
	const uint64 *w = (const uint64 *) page;

	for (int i = 0; i < CMK_IO_PAGE / 8; i++)
		if (w[i] != 0)
			return false;
	return true;
}

/* plain (caller's, never modified) -> out (ours, CMK_IO_PAGE bytes) */
bool
cmk_relpage_encrypt(const CmkFileId *id, uint32 blkno, const uint8 *plain,
					uint8 *out)
{
	PageHeader	ph = (PageHeader) out;
	uint8		tweak[CMK_XTS_TWEAK_LEN];

	if (all_zero(plain))
	{
		memset(out, 0, CMK_IO_PAGE);
		return true;
	}
	memcpy(out, plain, SizeOfPageHeaderData);
	make_tweak(id, blkno, tweak);
	if (!cmk_xts_crypt(&rel_xts, true, tweak, plain + SizeOfPageHeaderData,
					   out + SizeOfPageHeaderData,
					   CMK_IO_PAGE - SizeOfPageHeaderData))
		return false;
	ph->pd_flags |= CMK_PD_ENCRYPTED;
	if (rel_checksums)
		ph->pd_checksum = pg_checksum_page((char *) out, blkno);
	return true;
}

/*
 * stored (a page as read from disk) -> out (CMK_IO_PAGE bytes; may be
 * stored itself).  A page without the marker is copied as it is.  stored is
 * left as it was unless it is out (pg_checksum_page zeroes its pd_checksum
 * while it sums, and puts it back).
 */
bool
cmk_relpage_decrypt_copy(const CmkFileId *id, uint32 blkno,
						 uint8 *stored, uint8 *out)
{
	PageHeader	ph = (PageHeader) out;
	uint8		tweak[CMK_XTS_TWEAK_LEN];
	bool		intact = true;

	if ((((PageHeader) stored)->pd_flags & CMK_PD_ENCRYPTED) == 0)
	{
		if (out != stored)
			memcpy(out, stored, CMK_IO_PAGE);
		return true;
	}
	if (rel_checksums)
		intact = pg_checksum_page((char *) stored, blkno) ==
			((PageHeader) stored)->pd_checksum;
	make_tweak(id, blkno, tweak);
	if (!cmk_xts_crypt(&rel_xts, false, tweak, stored + SizeOfPageHeaderData,
					   out + SizeOfPageHeaderData,
					   CMK_IO_PAGE - SizeOfPageHeaderData))
		return false;
	if (out != stored)
		memcpy(out, stored, SizeOfPageHeaderData);
	ph->pd_flags &= ~CMK_PD_ENCRYPTED;
	if (rel_checksums)
	{
		uint16		plain = pg_checksum_page((char *) out, blkno);

		/* A damaged page keeps failing PostgreSQL's checksum test. */
		ph->pd_checksum = intact ? plain : (uint16) (plain ^ 1);
	}
	return true;
}

/* In place.  Pages without the marker are left as they are. */
bool
cmk_relpage_decrypt(const CmkFileId *id, uint32 blkno, uint8 *page)
{
	return cmk_relpage_decrypt_copy(id, blkno, page, page);
}

/*-------------------------------------------------------------------------
 *
 * xts_page_speed.c
 *		The raw AES-256-XTS throughput of this machine for relation pages, the
 *		way the cluster-encryption layer calls the cipher: one EVP context per
 *		direction with the key schedule set once, then for every 8 kB page a
 *		new tweak (EVP_CipherInit_ex2 with only the IV) and one
 *		EVP_CipherUpdate over the 8168 bytes after the page header
 *		(src/crypto/cmk_crypto.c, cmk_xts_crypt; docs/io-layer.md).
 *
 * bench/cluster.sh compiles and runs it; the result is the lower bound of
 * what encrypting or decrypting a page can cost, to compare the layer's
 * measured cost per page with.  It uses a random throw-away key and must
 * never be given a real one.
 *
 *	 xts_page_speed [SECONDS]
 *
 * prints "DIRECTION PAGES_PER_S MB_PER_S US_PER_PAGE" for encrypt, decrypt
 * (a new tweak per page) and encrypt-same-tweak, decrypt-same-tweak.
 *
 *-------------------------------------------------------------------------
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define PAGE_SIZE		8192
#define HEADER_SIZE		24		/* SizeOfPageHeaderData: stays in clear */

/*
 * CPU time of this process, not wall-clock time: on a machine shared with
 * other work the wall clock counts their time too ("openssl speed" also
 * reports per CPU second unless given -elapsed).
 */
static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Pages per second in one direction.  With reinit (the layer's way) every
 * page gets its own tweak; without it the same tweak is reused, which is
 * what "openssl speed -evp aes-256-xts" measures: the difference is the
 * cost of setting a tweak through EVP.
 */
static int
run(EVP_CIPHER_CTX *ctx, int enc, bool reinit, unsigned char *page, double seconds)
{
	unsigned char tweak[16] = {0};
	uint32_t	blkno = 0;
	long		pages = 0;
	double		t0 = now(),
				t;
	int			outl;

	do
	{
		/* 256 pages between clock reads */
		for (int i = 0; i < 256; i++, blkno++)
		{
			memcpy(tweak + 8, &blkno, sizeof(blkno));
			if ((reinit && EVP_CipherInit_ex2(ctx, NULL, NULL, tweak, enc, NULL) != 1) ||
				EVP_CipherUpdate(ctx, page + HEADER_SIZE, &outl, page + HEADER_SIZE,
								 PAGE_SIZE - HEADER_SIZE) != 1)
				return 1;
		}
		pages += 256;
		t = now() - t0;
	} while (t < seconds);
	printf("%s%s %.0f %.1f %.3f\n", enc ? "encrypt" : "decrypt", reinit ? "" : "-same-tweak",
		   pages / t, pages / t * PAGE_SIZE / 1e6, t / pages * 1e6);
	return 0;
}

int
main(int argc, char **argv)
{
	double		seconds = argc > 1 ? atof(argv[1]) : 1.0;
	unsigned char key[64];
	unsigned char page[PAGE_SIZE];
	EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "AES-256-XTS", NULL);
	EVP_CIPHER_CTX *enc = EVP_CIPHER_CTX_new();
	EVP_CIPHER_CTX *dec = EVP_CIPHER_CTX_new();
	int			rc;

	if (seconds <= 0)
		seconds = 1.0;
	/* XTS refuses equal key halves: a random key, as any real one is */
	if (!cipher || !enc || !dec || RAND_bytes(key, sizeof(key)) != 1 ||
		RAND_bytes(page, sizeof(page)) != 1 ||
		EVP_CipherInit_ex2(enc, cipher, key, NULL, 1, NULL) != 1 ||
		EVP_CipherInit_ex2(dec, cipher, key, NULL, 0, NULL) != 1)
	{
		fprintf(stderr, "xts_page_speed: OpenSSL set-up failed\n");
		return 1;
	}
	OPENSSL_cleanse(key, sizeof(key));
	rc = run(enc, 1, true, page, seconds) || run(dec, 0, true, page, seconds) ||
		run(enc, 1, false, page, seconds) || run(dec, 0, false, page, seconds);
	EVP_CIPHER_CTX_free(enc);
	EVP_CIPHER_CTX_free(dec);
	EVP_CIPHER_free(cipher);
	if (rc)
		fprintf(stderr, "xts_page_speed: EVP_CipherUpdate failed\n");
	return rc;
}

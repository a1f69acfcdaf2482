/*-------------------------------------------------------------------------
 *
 * cmk_selftest.c
 *		Known-answer tests for the primitives in cmk_crypto.c.
 *
 * The key worker runs these before it touches a key (a failing primitive
 * must never encrypt data), and cmk_storage.self_test() shows the results.
 * Vectors: NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt), RFC 5869 A.1-A.3
 * (HKDF-SHA256), RFC 4231 4.3 and 4.8 (HMAC-SHA256), RFC 4648 §10 (base64,
 * in the url-safe alphabet).
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "crypto/cmk_crypto.h"

static int
unhex(const char *hex, uint8_t *out, size_t outsize)
{
	size_t		n = strlen(hex) / 2;

	if (n > outsize)
		return -1;
	for (size_t i = 0; i < n; i++)
	{
		unsigned int hi,
					lo;
		char		c;

		c = hex[2 * i];
		hi = (c >= 'a') ? (unsigned) (c - 'a' + 10) : (unsigned) (c - '0');
		c = hex[2 * i + 1];
		lo = (c >= 'a') ? (unsigned) (c - 'a' + 10) : (unsigned) (c - '0');
		out[i] = (uint8_t) ((hi << 4) | lo);
	}
	return (int) n;
}

static bool
kat_aes256_ctr(void)
{
	uint8_t		key[32],
				iv[16],
				pt[64],
				ct[64],
				out[64];
	CmkKeystream ks;
	bool		ok;

	unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", key, sizeof(key));
	unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", iv, sizeof(iv));
	unhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
		  "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710", pt, sizeof(pt));
	unhex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
		  "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6", ct, sizeof(ct));

	if (!cmk_keystream_init(&ks, key))
		return false;
	ok = cmk_ctr_xor(&ks, iv, pt, out, sizeof(pt)) && memcmp(out, ct, sizeof(ct)) == 0;
	/* decryption is the same operation, and a partial last block must work */
	ok = ok && cmk_ctr_xor(&ks, iv, ct, out, 37) && memcmp(out, pt, 37) == 0;
	cmk_keystream_free(&ks);
	return ok;
}

static bool
kat_hkdf(const char *ikm_hex, const char *salt_hex, const char *info_hex,
		 const char *okm_hex)
{
	uint8_t		ikm[80],
				salt[80],
				info[80],
				okm[82],
				out[82];
	int			ikm_len = unhex(ikm_hex, ikm, sizeof(ikm));
	int			salt_len = unhex(salt_hex, salt, sizeof(salt));
	int			info_len = unhex(info_hex, info, sizeof(info));
	int			okm_len = unhex(okm_hex, okm, sizeof(okm));

	return cmk_hkdf_sha256(ikm, ikm_len, salt, salt_len, info, info_len,
						   out, okm_len) &&
		memcmp(out, okm, okm_len) == 0;
}

/* RFC 4231: key and data as hex, the full 32-byte MAC */
static bool
kat_hmac(const char *key_hex, const char *data_hex, const char *mac_hex)
{
	uint8_t		key[131],
				data[160],
				mac[CMK_HMAC_LEN],
				out[CMK_HMAC_LEN];
	int			key_len = unhex(key_hex, key, sizeof(key));
	int			data_len = unhex(data_hex, data, sizeof(data));

	unhex(mac_hex, mac, sizeof(mac));
	return key_len >= 0 && data_len >= 0 &&
		cmk_hmac_sha256(key, key_len, data, data_len, out) &&
		memcmp(out, mac, sizeof(mac)) == 0;
}

/* RFC 4231 4.8: a key longer than SHA-256's block is hashed first */
static bool
kat_hmac_long_key(void)
{
	char		key[2 * 131 + 1];

	memset(key, 'a', 2 * 131);
	key[2 * 131] = '\0';
	/* "This is a test using a larger than block-size key and a larger ..." */
	return kat_hmac(key,
					"5468697320697320612074657374207573696e672061206c6172676572207468"
					"616e20626c6f636b2d73697a65206b657920616e642061206c61726765722074"
					"68616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565"
					"647320746f20626520686173686564206265666f7265206265696e6720757365"
					"642062792074686520484d414320616c676f726974686d2e",
					"9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

static void
hex_range(char *buf, int from, int to)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = from; i < to; i++)
	{
		*buf++ = digits[i >> 4];
		*buf++ = digits[i & 15];
	}
	*buf = '\0';
}

static bool
kat_hkdf_long(void)
{
	char		ikm[161],
				salt[161],
				info[161];

	hex_range(ikm, 0x00, 0x50);
	hex_range(salt, 0x60, 0xb0);
	hex_range(info, 0xb0, 0x100);
	return kat_hkdf(ikm, salt, info,
					"b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
					"59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
					"cc30c58179ec3e87c14c01d5c1f3434f1d87");
}

static bool
kat_base64url(void)
{
	static const struct
	{
		const char *plain;
		const char *encoded;
	}			v[] = {
		{"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"},
		{"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
	};
	static const uint8_t url_bytes[] = {0xfb, 0xff, 0xbf};
	char		enc[16];
	uint8_t		dec[16];
	size_t		declen;

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
	{
		size_t		len = strlen(v[i].plain);

		if (cmk_base64url_encode((const uint8_t *) v[i].plain, len, enc, sizeof(enc)) != strlen(v[i].encoded) ||
			strcmp(enc, v[i].encoded) != 0)
			return false;
		if (!cmk_base64url_decode(v[i].encoded, strlen(v[i].encoded), dec, sizeof(dec), &declen) ||
			declen != len || memcmp(dec, v[i].plain, len) != 0)
			return false;
	}
	/* url-safe alphabet out, both alphabets and padding in */
	cmk_base64url_encode(url_bytes, 3, enc, sizeof(enc));
	if (strcmp(enc, "-_-_") != 0)
		return false;
	if (!cmk_base64url_decode("+/+/", 4, dec, sizeof(dec), &declen) || declen != 3 ||
		memcmp(dec, url_bytes, 3) != 0)
		return false;
	if (!cmk_base64url_decode("Zm8=", 4, dec, sizeof(dec), &declen) || declen != 2)
		return false;
	/* garbage is refused */
	if (cmk_base64url_decode("Zm9v!", 5, dec, sizeof(dec), &declen))
		return false;
	return true;
}

bool
cmk_crypto_selftest(cmk_selftest_report report, void *arg)
{
	struct
	{
		const char *name;
		bool		ok;
	}			results[7];
	int			n = 0;
	bool		all = true;

	results[n].name = "AES-256-CTR (NIST SP 800-38A F.5.5)";
	results[n++].ok = kat_aes256_ctr();
	results[n].name = "HKDF-SHA256 (RFC 5869 A.1)";
	results[n++].ok = kat_hkdf("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
							   "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9",
							   "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
							   "34007208d5b887185865");
	results[n].name = "HKDF-SHA256 (RFC 5869 A.2)";
	results[n++].ok = kat_hkdf_long();
	results[n].name = "HKDF-SHA256 (RFC 5869 A.3)";
	results[n++].ok = kat_hkdf("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "", "",
							   "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
							   "9d201395faa4b61a96c8");
	results[n].name = "HMAC-SHA256 (RFC 4231 4.3)";
	/* key "Jefe", data "what do ya want for nothing?" */
	results[n++].ok = kat_hmac("4a656665",
							   "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
							   "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
	results[n].name = "HMAC-SHA256 (RFC 4231 4.8)";
	results[n++].ok = kat_hmac_long_key();
	results[n].name = "base64url (RFC 4648 §10)";
	results[n++].ok = kat_base64url();

	for (int i = 0; i < n; i++)
	{
		if (report)
			report(arg, results[i].name, results[i].ok);
		all = all && results[i].ok;
	}
	return all;
}

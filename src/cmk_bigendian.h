/*-------------------------------------------------------------------------
 *
 * cmk_bigendian.h
 *		Big-endian integer fields of cmk_storage's on-disk formats: the
 *		control file, stream headers and the nonce epoch file.  Plain C
 *		(stdint only), so the server and the frontend tools share it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_BIGENDIAN_H
#define CMK_BIGENDIAN_H

#include <stdint.h>

/* n bytes (at most 8) at p, most significant first */
static inline void
cmk_put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t) (v >> (8 * (n - 1 - i)));
}

static inline uint64_t
cmk_get_be(const uint8_t *p, int n)
{
	uint64_t	v = 0;

	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline void
cmk_put16(uint8_t *p, uint16_t v)
{
	cmk_put_be(p, v, 2);
}

static inline void
cmk_put32(uint8_t *p, uint32_t v)
{
	cmk_put_be(p, v, 4);
}

static inline void
cmk_put64(uint8_t *p, uint64_t v)
{
	cmk_put_be(p, v, 8);
}

static inline uint16_t
cmk_get16(const uint8_t *p)
{
	return (uint16_t) cmk_get_be(p, 2);
}

static inline uint32_t
cmk_get32(const uint8_t *p)
{
	return (uint32_t) cmk_get_be(p, 4);
}

static inline uint64_t
cmk_get64(const uint8_t *p)
{
	return cmk_get_be(p, 8);
}

#endif							/* CMK_BIGENDIAN_H */

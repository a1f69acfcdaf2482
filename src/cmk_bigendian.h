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

static inline void
cmk_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t) (v >> 8);
	p[1] = (uint8_t) v;
}

static inline void
cmk_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t) (v >> (24 - 8 * i));
}

static inline void
cmk_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t) (v >> (56 - 8 * i));
}

static inline uint16_t
cmk_get16(const uint8_t *p)
{
	return (uint16_t) ((p[0] << 8) | p[1]);
}

static inline uint32_t
cmk_get32(const uint8_t *p)
{
	uint32_t	v = 0;

	for (int i = 0; i < 4; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t
cmk_get64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

#endif							/* CMK_BIGENDIAN_H */

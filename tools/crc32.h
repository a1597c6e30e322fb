/* crc32.h: the CRC-32 of zlib, gzip and PNG (reflected polynomial 0xEDB88320), so that a
 * checkpoint's checksums can be checked by anything that has zlib, Python's zlib.crc32 for one. */
#ifndef DP_TOOLS_CRC32_H
#define DP_TOOLS_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* The CRC of n more bytes after those that gave crc (0 to start): crc32_update(0, "123456789", 9)
 * is 0xCBF43926. */
uint32_t crc32_update(uint32_t crc, const void *bytes, size_t n);

#endif

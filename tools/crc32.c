/* crc32.c: CRC-32 (see crc32.h), a byte at a time through a table of the 256 remainders,
 * built on first use: checkpoints are checked at disk speed, not faster. */
#include "tools/crc32.h"

#include <stdatomic.h>

static uint32_t table[256];
static atomic_int table_ready;

static void build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t r = i;
        for (int k = 0; k < 8; k++) r = (r >> 1) ^ (0xEDB88320u & (0u - (r & 1u)));
        table[i] = r;
    }
    atomic_store(&table_ready, 1);
}

uint32_t crc32_update(uint32_t crc, const void *bytes, size_t n)
{
    /* two threads building it at once write the same values; the flag only orders the reads */
    if (!atomic_load(&table_ready)) build_table();
    const unsigned char *p = bytes;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return ~crc;
}

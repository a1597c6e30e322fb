/* bench_moe.h: the MoE part of `dualpipe bench` (and `make bench`): one MoE stage on the CPU
 * driver with its experts over 1, 2 and 4 expert-parallel ranks: tokens per second, and the
 * bytes per step its dispatch and combine move between ranks (exact mode, as run), with what a
 * pre-summed combine would move on the same layout. */
#ifndef DP_TOOLS_BENCH_MOE_H
#define DP_TOOLS_BENCH_MOE_H

/* Prints the table; `quick`: small shapes (seconds). 0, or nonzero having said why. */
int bench_moe(int quick, int steps);

#endif

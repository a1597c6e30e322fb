/* bench_overlap.h: the overlap part of `dualpipe bench` (and `make bench`): DualPipe and 1F1B
 * with MoE layers and expert parallelism over the cpu link's emulated network, the overlap of an
 * F&B pair's all-to-alls on and off: step time, exposed all-to-all measured and simulated. */
#ifndef DP_TOOLS_BENCH_OVERLAP_H
#define DP_TOOLS_BENCH_OVERLAP_H

/* Prints the table; `quick`: two cases at small shapes (seconds). 0, or nonzero having said why. */
int bench_overlap(int quick, int steps);

#endif

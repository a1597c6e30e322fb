/* bootstrap_tcp.h: the TCP rendezvous bootstrap, for torchrun-style launches without MPI:
 * process 0 listens on MASTER_ADDR:MASTER_PORT, the others connect to it, and the bootstrap's
 * collectives (allgather, broadcast, barrier, abort) travel through process 0. It carries
 * bootstrap bytes only (the NCCL unique id, where each rank runs), never a job's data. */
#ifndef DP_BOOTSTRAP_TCP_H
#define DP_BOOTSTRAP_TCP_H

#include <stdint.h>

#include "engine/link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest collective result the bootstrap moves (a safeguard against garbage lengths). */
#define DP_BOOTSTRAP_TCP_MAX_BYTES ((uint64_t)1 << 30)

typedef struct {
    const char *addr; /* where process 0 listens and the others connect (MASTER_ADDR); NULL: 127.0.0.1 */
    const char *port; /* the port, a number (MASTER_PORT) */
    int world_size;   /* ranks in the job */
    int processes;    /* processes in the job */
    int process;      /* this one, 0 .. processes-1 */
    /* Which process hosts each rank: world_size entries, alike in every process. NULL: blocks
     * in rank order, rank r in process r / (world_size / processes), which must divide. */
    const int *process_of;
    int timeout_ms;   /* the rendezvous and every call give up after this long (0: 60 s) */
} dp_bootstrap_tcp_config;

/* Every process of the job calls this once, whatever number of rank threads it hosts; it
 * returns when all processes have met (process 0 has accepted one connection from each
 * other), or fails after the timeout naming the processes missing. Process 0 listens on
 * cfg->addr when it names this host's loopback interface, else on every interface (so that a
 * host name resolving to a loopback address on process 0's host still reaches it from other
 * hosts); the others retry their connection until the timeout. A connection that does not
 * speak this protocol (another program, another job with other sizes) is refused and logged,
 * and the rendezvous goes on. Errors name the address, the port and what to change. */
dp_status dp_bootstrap_tcp_create(const dp_bootstrap_tcp_config *cfg, void **ctx);

/* Leaves the job: tells the others this process left on purpose (so that they do not take
 * it for a crash) and closes the connections. After every call of every local rank returned. */
void dp_bootstrap_tcp_destroy(void *ctx);

/* The ops: `rank` is a world rank hosted by this process. The rank threads of one process
 * meet first (bootstrap_meeting.h); the last to arrive talks to process 0. An abort, a
 * process that vanishes (its connection closed or reset without leaving) or a call that misses
 * its deadline ends the job for every process: their pending and later calls fail with
 * DP_ERR_COMM naming the rank or process and why. A later call fails at once, without touching
 * a socket: each call first takes in what has arrived, so that an abort waiting there is
 * never met by a send to a process that has gone. */
extern const dp_bootstrap_ops dp_bootstrap_tcp;

#ifdef __cplusplus
}
#endif
#endif

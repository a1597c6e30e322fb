/* test_engine_setup.c: a rank that fails during set-up (here its device cannot be opened)
 * ends the runtime's creation on every rank at once, with a message naming that rank and its
 * reason, instead of leaving the others waiting for it in the link's collective set-up until
 * their timeout. The link timeout is an hour: only the set-up's gate can end the wait, and an
 * alarm turns a hang into a failure. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/runtime.h"
#include "tests/tap.h"

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "not ok - set-up still waiting after 120 s: a failed rank left the others hanging\n";
    if (write(1, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

int main(void)
{
    const char *top = getenv("top_builddir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/.libs", top ? top : ".");
    setenv("DUALPIPE_DRIVER_PATH", dir, 1);
    signal(SIGALRM, on_alarm);
    static const char *const schedules[] = {"dualpipe", "dualpipev", "1f1b"};
    for (int i = 0; i < 3; i++) {
        alarm(120);
        dp_runtime_config c;
        memset(&c, 0, sizeof c);
        c.driver = "failopen";
        c.schedule = schedules[i];
        c.ranks = 4;
        c.chunks = 8;
        c.model.hidden = 8;
        c.model.tokens = 2;
        c.threads_per_rank = 1;
        c.timeout_ms = 3600 * 1000;
        dp_runtime *rt = NULL;
        dp_status st = dp_runtime_create(&c, &rt);
        alarm(0);
        tap_ok(st == DP_ERR_DEVICE && rt == NULL, "%s, 4 ranks, rank 1's device out of order: creation fails (%d)",
               schedules[i], (int)st);
        tap_ok(strstr(dp_last_error(), "rank 1") && strstr(dp_last_error(), "out of order"),
               "naming rank 1 and why: %s", dp_last_error());
        dp_runtime_destroy(rt);
    }
    return tap_done();
}

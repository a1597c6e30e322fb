/* status.h: status codes, the per-thread error message and the log hook shared by
 * the whole dualpipe library. The library never prints and never exits: it returns
 * a dp_status, leaves a message for dp_last_error(), and logs through a hook. */
#ifndef DP_STATUS_H
#define DP_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int dp_status;

enum {
    DP_OK = 0,
    DP_ERR_INVALID = -1,     /* bad argument or configuration: the message names the rule */
    DP_ERR_NOMEM = -2,       /* out of memory (host or device) */
    DP_ERR_UNSUPPORTED = -3, /* a driver does not implement this operation */
    DP_ERR_TIMEOUT = -4,     /* a wait gave up */
    DP_ERR_IO = -5,          /* a file could not be read or written */
    DP_ERR_NOT_FOUND = -6,   /* a driver, schedule or file was not found */
    DP_ERR_DEVICE = -7,      /* the device or its runtime failed */
    DP_ERR_COMM = -8,        /* a link (communication) failure */
    DP_ERR_INTERNAL = -9,    /* a broken invariant: a bug in dualpipe */
    DP_ERR_NONFINITE = -10,  /* a computed number (a loss) is not finite: training diverged */
};

/* A short name for a status code ("invalid argument", ...). */
const char *dp_status_name(dp_status s);

/* The message left by the last failing call on this thread ("" when none). */
const char *dp_last_error(void);

/* Sets this thread's message and returns s, so that error paths read
 * `return dp_fail(DP_ERR_INVALID, "chunks (%d) must be even", n);`. The arguments may include
 * dp_last_error(), to add context to a failure: `dp_fail(st, "step %d: %s", k, dp_last_error())`. */
dp_status dp_fail(dp_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Returns upward on failure, keeping the message of the call that failed. */
#define DP_CHECK(call)                 \
    do {                               \
        dp_status dp_check_s_ = (call); \
        if (dp_check_s_ != DP_OK)      \
            return dp_check_s_;        \
    } while (0)

/* Log hook: the library's only way to say something. Default: silent. */
typedef enum { DP_LOG_ERROR = 0, DP_LOG_WARN = 1, DP_LOG_INFO = 2, DP_LOG_DEBUG = 3 } dp_log_level;
typedef void (*dp_log_fn)(void *user, dp_log_level level, const char *message);
void dp_log_set_hook(dp_log_fn fn, void *user, dp_log_level max_level);
void dp_log(dp_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The environment variable that asks for more log: what a tool's hook passes on (the library
 * itself reads no log setting: whoever installs the hook chooses). */
#define DP_LOG_ENV "DUALPIPE_DEBUG"
/* The level a DUALPIPE_DEBUG value asks for: unset, empty or "0": DP_LOG_WARN (errors and
 * warnings); "1" or "info": DP_LOG_INFO (what was loaded and chosen, once per run); "2" or
 * "debug": DP_LOG_DEBUG. Anything else: DP_ERR_INVALID, a message saying what is accepted, and
 * *level = DP_LOG_INFO (whoever set it wanted to see more). */
dp_status dp_log_level_parse(const char *text, dp_log_level *level);
/* "error", "warning", "info", "debug". */
const char *dp_log_level_name(dp_log_level level);

#ifdef __cplusplus
}
#endif
#endif

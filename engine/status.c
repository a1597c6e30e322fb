/* status.c: per-thread error messages and the log hook (see status.h). */
#include "engine/status.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char dp_errbuf[1024];

const char *dp_status_name(dp_status s)
{
    switch (s) {
    case DP_OK: return "ok";
    case DP_ERR_INVALID: return "invalid argument";
    case DP_ERR_NOMEM: return "out of memory";
    case DP_ERR_UNSUPPORTED: return "not supported";
    case DP_ERR_TIMEOUT: return "timed out";
    case DP_ERR_IO: return "input/output error";
    case DP_ERR_NOT_FOUND: return "not found";
    case DP_ERR_DEVICE: return "device error";
    case DP_ERR_COMM: return "communication error";
    case DP_ERR_INTERNAL: return "internal error";
    case DP_ERR_NONFINITE: return "not a finite number";
    default: return "unknown error";
    }
}

const char *dp_last_error(void) { return dp_errbuf; }

dp_status dp_fail(dp_status s, const char *fmt, ...)
{
    /* formatted aside first: an argument may be dp_last_error() itself (adding context) */
    char msg[sizeof dp_errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(dp_errbuf, msg, sizeof msg);
    return s;
}

/* ----------------------------------------------------------------------------
 * log hook */

static pthread_mutex_t dp_log_lock = PTHREAD_MUTEX_INITIALIZER;
static dp_log_fn dp_log_hook;
static void *dp_log_user;
static dp_log_level dp_log_max = DP_LOG_INFO;

void dp_log_set_hook(dp_log_fn fn, void *user, dp_log_level max_level)
{
    pthread_mutex_lock(&dp_log_lock);
    dp_log_hook = fn;
    dp_log_user = user;
    dp_log_max = max_level;
    pthread_mutex_unlock(&dp_log_lock);
}

void dp_log(dp_log_level level, const char *fmt, ...)
{
    pthread_mutex_lock(&dp_log_lock);
    dp_log_fn fn = dp_log_hook;
    void *user = dp_log_user;
    int wanted = fn && level <= dp_log_max;
    pthread_mutex_unlock(&dp_log_lock);
    if (!wanted) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(user, level, msg);
}

dp_status dp_log_level_parse(const char *text, dp_log_level *level)
{
    if (!text || !*text || strcmp(text, "0") == 0) {
        *level = DP_LOG_WARN;
    } else if (strcmp(text, "1") == 0 || strcmp(text, "info") == 0) {
        *level = DP_LOG_INFO;
    } else if (strcmp(text, "2") == 0 || strcmp(text, "debug") == 0) {
        *level = DP_LOG_DEBUG;
    } else {
        *level = DP_LOG_INFO;
        return dp_fail(DP_ERR_INVALID, DP_LOG_ENV " is '%s'; use 1 (or info) for what was loaded and chosen, "
                                                  "2 (or debug) for more, 0 or unset for warnings only",
                       text);
    }
    return DP_OK;
}

const char *dp_log_level_name(dp_log_level level)
{
    switch (level) {
    case DP_LOG_ERROR: return "error";
    case DP_LOG_WARN: return "warning";
    case DP_LOG_INFO: return "info";
    case DP_LOG_DEBUG: return "debug";
    }
    return "log";
}

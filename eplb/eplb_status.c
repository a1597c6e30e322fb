/* eplb_status.c: the balancer's error messages (one per thread) and status names. */
#include "config.h"
#include "eplb/eplb_internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char eplb_error_[512];

const char *eplb_last_error(void) { return eplb_error_; }

eplb_status eplb_fail(eplb_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(eplb_error_, sizeof eplb_error_, fmt, ap);
    va_end(ap);
    return s;
}

const char *eplb_status_name(eplb_status s)
{
    switch (s) {
    case EPLB_OK: return "ok";
    case EPLB_ERR_INVALID: return "invalid argument";
    case EPLB_ERR_NOMEM: return "out of memory";
    case EPLB_ERR_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}

const char *eplb_version(void) { return PACKAGE_VERSION; }

/* tap.h: a small TAP producer for dualpipe's tests (run through automake's tap-driver.sh).
 * Header-only: each test program includes it once. Comparisons follow the project rule
 * |a - b| <= atol + rtol * |b|, and NaN never passes. */
#ifndef DP_TESTS_TAP_H
#define DP_TESTS_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_count_;
static int tap_failed_;
static int tap_planned_;

static inline void tap_plan(int n) { tap_planned_ = n; printf("1..%d\n", n); fflush(stdout); }

/* Skip the whole program: prints the plan "1..0 # SKIP reason" and exits 0. */
static inline void tap_skip_all(const char *reason)
{
    printf("1..0 # SKIP %s\n", reason);
    fflush(stdout);
    exit(0);
}

static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("# ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

static inline int tap_vok(int cond, const char *fmt, va_list ap)
{
    ++tap_count_;
    if (!cond) ++tap_failed_;
    printf("%s %d - ", cond ? "ok" : "not ok", tap_count_);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    return cond;
}

static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tap_vok(cond, fmt, ap);
    va_end(ap);
    return r;
}

static inline int tap_is_int(long long got, long long want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tap_vok(got == want, fmt, ap);
    va_end(ap);
    if (!r) tap_diag("got %lld, want %lld", got, want);
    return r;
}

static inline int tap_is_str(const char *got, const char *want, const char *fmt, ...)
{
    int same = got && want && strcmp(got, want) == 0;
    va_list ap;
    va_start(ap, fmt);
    int r = tap_vok(same, fmt, ap);
    va_end(ap);
    if (!r) tap_diag("got \"%s\", want \"%s\"", got ? got : "(null)", want ? want : "(null)");
    return r;
}

/* True when |a - b| <= atol + rtol * |b|; NaN or Inf in either never passes. */
static inline int tap_close(double a, double b, double atol, double rtol)
{
    if (!isfinite(a) || !isfinite(b)) return 0;
    return fabs(a - b) <= atol + rtol * fabs(b);
}

static inline int tap_near(double got, double want, double atol, double rtol, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tap_vok(tap_close(got, want, atol, rtol), fmt, ap);
    va_end(ap);
    if (!r) tap_diag("got %.17g, want %.17g (atol %g, rtol %g)", got, want, atol, rtol);
    return r;
}

/* Ends the program: the plan is printed here when tap_plan was not called. */
static inline int tap_done(void)
{
    if (!tap_planned_) printf("1..%d\n", tap_count_);
    else if (tap_planned_ != tap_count_) {
        tap_diag("planned %d tests but ran %d", tap_planned_, tap_count_);
        return 1;
    }
    fflush(stdout);
    return tap_failed_ ? 1 : 0;
}

#endif

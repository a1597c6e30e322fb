/* compare.h: element-by-element comparison of float tensors, the one used by `train --verify`,
 * `verify` and the pipeline test: each element is held to its own tolerance
 * (|got - want| <= tol; NaN never passes), and the statistics say how far apart the tensors are. */
#ifndef DP_TOOLS_COMPARE_H
#define DP_TOOLS_COMPARE_H

#include <stddef.h>

#include "engine/reference.h"
#include "engine/runtime.h"

typedef struct {
    size_t n;             /* elements compared */
    size_t unequal;       /* elements whose bits differ */
    size_t outside;       /* elements outside their tolerance, NaN included */
    size_t first_outside; /* the first of them (index), when outside > 0 */
    double first_got, first_want;
    double max_abs; /* largest |got - want| (infinite where either is NaN) */
    double max_rel; /* largest |got - want| / |want| (infinite where want is 0 and got is not) */
    double max_use; /* largest |got - want| / tol: the fraction of the tolerance used */
} compare_stats;

/* Folds element i into s, held to |got - want| <= tol (INFINITY: only the statistics). */
void compare_element(compare_stats *s, size_t i, double got, double want, double tol);
/* Every element held to atol + rtol |want| (0, 0: bit-equal). */
void compare_floats(compare_stats *s, const float *got, const float *want, size_t n, double atol, double rtol);
/* Adds the elements of b to a (b's indices are taken as they are). */
void compare_merge(compare_stats *a, const compare_stats *b);

/* Every parameter (grad 0) or gradient (grad 1) of every copy of every stage of every
 * data-parallel replica of rt against the
 * single-rank reference, folded into s with atol + rtol |reference|. Returns DP_OK, or the
 * error of a read (the message says which tensor). ref NULL: only takes part in the reads (a
 * process of a job that does not host rank 0, where nothing arrives). */
dp_status compare_with_reference(dp_runtime *rt, dp_reference *ref, int grad, double atol, double rtol,
                                 compare_stats *s);

#endif

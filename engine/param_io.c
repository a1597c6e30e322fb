/* param_io.c: a parameter's tensors between host and device (see param_io.h). */
#include "engine/param_io.h"

#include <stdio.h>
#include <string.h>

const char *dp_tensor_kind_name(dp_tensor_kind which)
{
    switch (which) {
    case DP_TENSOR_VALUE: return "value";
    case DP_TENSOR_GRAD: return "grad";
    case DP_TENSOR_M: return "m";
    case DP_TENSOR_V: return "v";
    }
    return "?";
}

float *dp_param_tensor(const dp_param_view *v, dp_tensor_kind which)
{
    return which == DP_TENSOR_VALUE ? v->value : which == DP_TENSOR_GRAD ? v->grad : which == DP_TENSOR_M ? v->m : v->v;
}

static dp_status check_args(dp_stage *st, int i, dp_tensor_kind which)
{
    if (i < 0 || i >= dp_stage_num_params(st))
        return dp_fail(DP_ERR_INVALID, "stage %d has no parameter %d (it has %d)", dp_stage_index(st), i,
                       dp_stage_num_params(st));
    if (which < DP_TENSOR_VALUE || which > DP_TENSOR_V)
        return dp_fail(DP_ERR_INVALID, "no tensor kind %d (DP_TENSOR_VALUE, _GRAD, _M or _V)", (int)which);
    return DP_OK;
}

dp_status dp_param_read(const dp_device_ops *D, dp_device *dev, dp_stage *st, int i, dp_tensor_kind which,
                        float *host, size_t *count, char name[32])
{
    DP_CHECK(check_args(st, i, which));
    dp_param_view v;
    dp_stage_param(st, i, &v);
    if (count) *count = v.count;
    if (name) snprintf(name, 32, "%s", v.name);
    if (!host) return DP_OK;
    const float *src = dp_param_tensor(&v, which);
    if (!src) {
        memset(host, 0, v.count * sizeof(float));
        return DP_OK;
    }
    return D->copy(dev, host, src, v.count * sizeof(float), DP_COPY_DEVICE_TO_HOST, NULL);
}

dp_status dp_param_write(const dp_device_ops *D, dp_device *dev, dp_stage *st, int i, dp_tensor_kind which,
                         const float *host, size_t count)
{
    DP_CHECK(check_args(st, i, which));
    dp_param_view v;
    dp_stage_param(st, i, &v);
    if (count != v.count)
        return dp_fail(DP_ERR_INVALID, "stage %d parameter %s holds %zu floats; %zu were given for its %s",
                       dp_stage_index(st), v.name, v.count, count, dp_tensor_kind_name(which));
    if (which == DP_TENSOR_M || which == DP_TENSOR_V) {
        DP_CHECK(dp_stage_param_state(st, i, which, NULL));
        dp_stage_param(st, i, &v);
    }
    DP_CHECK(D->copy(dev, dp_param_tensor(&v, which), host, count * sizeof(float), DP_COPY_HOST_TO_DEVICE, NULL));
    if (which == DP_TENSOR_VALUE) DP_CHECK(dp_stage_param_refresh(st, i, NULL));
    return D->stream_synchronize(dev, NULL);
}

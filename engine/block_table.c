/* block_table.c: the built-in block kinds, one row each, made from DP_BLOCK_KINDS (model.h), and
 * what every kind shares: the stub for a kind without state, names and parsing. */
#include "engine/block.h"

#include <stdio.h>
#include <string.h>

#define DP_BLOCK_DECLARE_(K, name) extern const dp_block_ops dp_block_##name;
DP_BLOCK_KINDS(DP_BLOCK_DECLARE_)
#undef DP_BLOCK_DECLARE_

const dp_block_ops *const dp_block_table[DP_BLOCK_NUM_KINDS] = {
#define DP_BLOCK_ROW_(K, name) [DP_BLOCK_##K] = &dp_block_##name,
    DP_BLOCK_KINDS(DP_BLOCK_ROW_)
#undef DP_BLOCK_ROW_
};

dp_status dp_block_no_state_create(dp_block_layer *layer)
{
    layer->state = NULL;
    return DP_OK;
}

void dp_block_no_state_destroy(dp_block_layer *layer) { (void)layer; }

const char *dp_block_kind_name(dp_block_kind kind)
{
    return (int)kind >= 0 && kind < DP_BLOCK_NUM_KINDS ? dp_block_table[kind]->name : NULL;
}

dp_status dp_block_kind_parse(const char *name, dp_block_kind *out)
{
    char known[256] = "";
    for (int k = 0; k < DP_BLOCK_NUM_KINDS; k++) {
        if (name && strcmp(name, dp_block_table[k]->name) == 0) {
            *out = (dp_block_kind)k;
            return DP_OK;
        }
        size_t at = strlen(known);
        snprintf(known + at, sizeof known - at, "%s%s", k ? ", " : "", dp_block_table[k]->name);
    }
    return dp_fail(DP_ERR_INVALID, "unknown block kind '%s' (known: %s)", name ? name : "", known);
}

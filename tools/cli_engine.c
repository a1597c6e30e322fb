/* cli_engine.c: the `dualpipe` command's option helpers that need the engine's types (see
 * cli_engine.h). */
#include "tools/cli_engine.h"

#include <string.h>

int cli_parse_dtype(const char *option, const char *text, dp_dtype *out)
{
    if (text && (strcmp(text, "fp32") == 0 || strcmp(text, "float32") == 0)) *out = DP_DTYPE_F32;
    else if (text && (strcmp(text, "bf16") == 0 || strcmp(text, "bfloat16") == 0)) *out = DP_DTYPE_BF16;
    else {
        cli_error("%s expects fp32 or bf16, got '%s'", option, text ? text : "");
        return 1;
    }
    return 0;
}

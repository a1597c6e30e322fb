/* cli_engine.h: what the `dualpipe` command's files share beyond tools/cli.h, where the engine's
 * types and status come in: the dtype option and CLI_TRY. Kept apart so that the eplb tool, which
 * shares cli.h, builds without the engine's headers. */
#ifndef DP_TOOLS_CLI_ENGINE_H
#define DP_TOOLS_CLI_ENGINE_H

#include "engine/device.h"
#include "tools/cli.h"

/* "fp32" or "bf16" (also "float32", "bfloat16") into a dtype; an error naming the option otherwise. */
int cli_parse_dtype(const char *option, const char *text, dp_dtype *out);

/* In a function with an `out:` label: a failed dp_status call prints the call and
 * dp_last_error() and jumps there. */
#define CLI_TRY(call)                                                         \
    do {                                                                      \
        if ((call) != DP_OK) {                                                \
            cli_error("%s: %s", #call, dp_last_error());                      \
            goto out;                                                         \
        }                                                                     \
    } while (0)

#endif

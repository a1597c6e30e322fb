/* log_stderr.c: the library's log on the tools' stderr (see log_stderr.h). */
#include "tools/log_stderr.h"

#include <stdio.h>
#include <stdlib.h>

#include "engine/status.h"
#include "tools/cli.h"

static void to_stderr(void *user, dp_log_level level, const char *message)
{
    (void)user;
    /* one call per line, so that lines from rank threads do not interleave */
    fprintf(stderr, "%s: %s: %s\n", cli_program, dp_log_level_name(level), message);
}

void log_stderr_install(void)
{
    dp_log_level level;
    if (dp_log_level_parse(getenv(DP_LOG_ENV), &level) != DP_OK) cli_warn("%s", dp_last_error());
    dp_log_set_hook(to_stderr, NULL, level);
}

/* log_stderr.h: the dualpipe tools' log hook: the library's messages on stderr, prefixed with
 * the command and the level, as many as DUALPIPE_DEBUG asks for (warnings only by default). */
#ifndef DP_TOOLS_LOG_STDERR_H
#define DP_TOOLS_LOG_STDERR_H

/* Installs the hook; warns (and shows info) when DUALPIPE_DEBUG holds something unknown. */
void log_stderr_install(void);

#endif

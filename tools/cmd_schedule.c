/* cmd_schedule.c: `dualpipe schedule` (placeholder until the writers land). */
#include "tools/commands.h"
int cmd_schedule(int argc, char **argv) { (void)argc; (void)argv; return 1; }

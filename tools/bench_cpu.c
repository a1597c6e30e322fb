/* bench_cpu.c: `make bench`'s CPU benchmark: the same figures as `dualpipe bench`. */
#include "tools/cli.h"
#include "tools/commands.h"

int main(int argc, char **argv)
{
    cli_program = "bench_cpu";
    return cmd_bench(argc, argv);
}

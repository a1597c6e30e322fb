/* output_file.h: how every tool writes a file it was asked for. A regular file (or a new one) is
 * written to a temporary beside it and renamed over it only when whole; anything else (a device,
 * a FIFO, a socket, "-" for standard output) is written straight through. */
#ifndef DP_TOOLS_OUTPUT_FILE_H
#define DP_TOOLS_OUTPUT_FILE_H

#include <stdio.h>

/* A path named on the command line: `option` says how, for messages ("-o", "--svg", "LOADS").
 * A NULL path was not given; "-" is a standard stream, never the same file as another. */
typedef struct {
    const char *option;
    const char *path;
} named_path;

/* Before anything is read or written: refuses an output that is a directory, an output that is
 * the same file as an input (the same device and inode, or for a file still to be created the
 * same resolved path), and two outputs that are the same file. Returns 0, or CLI_EXIT_USAGE
 * having named both paths. A character device (a terminal) may be input and output at once:
 * writing to it destroys nothing. */
int output_files_check(const named_path *outputs, int num_outputs, const named_path *inputs, int num_inputs);

/* An open output. Symbolic links are resolved: their target is what gets replaced (a dangling
 * link's target is created). A new file gets mode 0666 & ~umask, a replaced one keeps its mode
 * and, where permitted, its owner and group. Until commit the temporary is removed if the
 * process is ended by SIGINT, SIGTERM or SIGHUP (the signal then ends it as it would have). */
typedef struct {
    FILE *fp;     /* write here */
    char *path;   /* as given, for messages */
    char *target; /* the regular file replaced on commit (symlinks resolved); NULL when written through */
    char *tmp;    /* its temporary until commit */
} output_file;

/* Opens path (NULL or "-": standard output). 0, or nonzero having said why. */
int output_file_open(output_file *o, const char *path);
/* Flushes and closes; a temporary is synced and renamed over the target. 0, or nonzero having
 * said why (the temporary is removed then). */
int output_file_commit(output_file *o);
/* Closes without committing and removes the temporary (harmless on a zeroed or committed one). */
void output_file_abort(output_file *o);

#endif

/* eplb_input.h: what the eplb tool reads: expert loads (SGLang's JSON dump or CSV /
 * whitespace text, one layer per line) and a placement (a plan JSON with phy2log), each
 * error naming the file, the line and the rule broken. */
#ifndef EPLB_TOOLS_INPUT_H
#define EPLB_TOOLS_INPUT_H

typedef struct {
    int layers, experts;
    double *w;        /* layers * experts */
    int first_line;   /* line of the first layer, for messages about its length */
} eplb_loads;

/* Reads the whole of path ("-" or NULL: stdin). Returns 0, or prints the problem (through
 * cli_error) and returns nonzero. */
int eplb_read_loads(const char *path, eplb_loads *out);
void eplb_loads_free(eplb_loads *l);
/* The same from text already in memory (NUL-terminated; changed while read), named `name` in
 * messages. */
int eplb_parse_loads(const char *name, char *text, eplb_loads *out);

/* Reads phy2log (layers x replicas ints) from a plan JSON. */
int eplb_read_phy2log(const char *path, int *layers, int *replicas, int **phy2log);
/* The same from text in memory, named `name` in messages. */
int eplb_parse_phy2log(const char *name, const char *text, int *layers, int *replicas, int **phy2log);

/* Reads a file or stdin into a NUL-terminated buffer; refuses (NULL, having said why) one
 * holding a NUL byte or larger than EPLB_SLURP_MAX bytes. */
#define EPLB_SLURP_MAX ((size_t)256 << 20)
char *eplb_slurp(const char *path, long *len);

#endif

/* eplb_json.h: a small JSON reader for the eplb tool: a tree of values, each with the line
 * it started on, so that errors can point into the file. */
#ifndef EPLB_TOOLS_JSON_H
#define EPLB_TOOLS_JSON_H

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

typedef struct json_value {
    json_kind kind;
    int line;
    double number;             /* JSON_NUMBER, JSON_BOOL */
    char *string;              /* JSON_STRING; for members of an object, the key is in key */
    char *key;                 /* set on members of an object */
    struct json_value *items;  /* JSON_ARRAY, JSON_OBJECT */
    int count;
} json_value;

/* Parses text; on failure returns NULL and writes "N: what" into err (N the line), so that
 * "FILE:" before it makes the FILE:LINE: of every other input error. */
json_value *json_parse(const char *text, char *err, int errlen);
void json_free(json_value *v);
/* The member of an object with this key, or NULL. */
const json_value *json_member(const json_value *obj, const char *key);

#endif

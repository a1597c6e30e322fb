/* output_file.c: the tools' output files (see output_file.h): what a path resolves to, the
 * checks made before a command starts, the temporary renamed into place or the stream written
 * through, and the signal handler that removes temporaries when the process is interrupted. */
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700 /* realpath */
#include "tools/output_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tools/cli.h"

/* ----------------------------------------------------------------------------
 * temporaries removed on SIGINT, SIGTERM and SIGHUP */

/* The handler may run on any thread at any time: the names it reads are published and
 * withdrawn with atomic stores, and a name is freed only after it has been withdrawn. */
enum { MAX_TEMPORARIES = 16 };
static _Atomic(char *) temporaries[MAX_TEMPORARIES];
static atomic_flag handler_installed = ATOMIC_FLAG_INIT;
static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void remove_temporaries(int sig)
{
    int saved = errno;
    for (int i = 0; i < MAX_TEMPORARIES; i++) {
        char *p = atomic_load(&temporaries[i]);
        if (p) unlink(p);
    }
    /* end as the signal would have: the exit status says which signal it was. It is blocked
     * while this handler runs, so it arrives, with the default action, on return. */
    signal(sig, SIG_DFL);
    raise(sig);
    errno = saved;
}

static void install_handler(void)
{
    if (atomic_flag_test_and_set(&handler_installed)) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = remove_temporaries;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++)
        sigaddset(&sa.sa_mask, cleanup_signals[i]);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++) {
        struct sigaction old;
        /* a signal ignored at start (nohup's SIGHUP) stays ignored; one somebody else
         * handles stays theirs */
        if (sigaction(cleanup_signals[i], NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
            old.sa_handler == SIG_DFL)
            sigaction(cleanup_signals[i], &sa, NULL);
    }
}

static void register_temporary(char *name)
{
    install_handler();
    for (int i = 0; i < MAX_TEMPORARIES; i++) {
        char *expected = NULL;
        if (atomic_compare_exchange_strong(&temporaries[i], &expected, name)) return;
    }
    /* more outputs open at once than slots: this one is still removed on failure, only not
     * when a signal ends the process */
}

static void unregister_temporary(const char *name)
{
    for (int i = 0; i < MAX_TEMPORARIES; i++) {
        char *expected = (char *)name;
        if (atomic_compare_exchange_strong(&temporaries[i], &expected, NULL)) return;
    }
}

/* ----------------------------------------------------------------------------
 * what a path resolves to */

typedef enum { TO_STDOUT, TO_STREAM, TO_REPLACE } output_kind;

typedef struct {
    output_kind kind;
    char *target;   /* TO_REPLACE: the regular file to replace; TO_STREAM: the path */
    int exists;     /* and st describes it (symlinks followed) */
    struct stat st;
} resolved;

static char *join_dir(const char *dir, size_t dir_len, const char *name)
{
    size_t n = dir_len + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%.*s/%s", (int)dir_len, dir, name);
    return p;
}

/* The file a chain of symbolic links that ends nowhere would create: the last link's target,
 * relative to that link's directory. NULL (errno set) on a loop or an error. */
static char *dangling_target(const char *path)
{
    char *cur = strdup(path);
    for (int hops = 0; cur && hops < 40; hops++) {
        char link[PATH_MAX];
        ssize_t n = readlink(cur, link, sizeof link - 1);
        if (n < 0) {
            free(cur);
            return NULL;
        }
        link[n] = 0;
        char *next;
        const char *slash = strrchr(cur, '/');
        if (link[0] == '/' || !slash) next = strdup(link);
        else next = join_dir(cur, (size_t)(slash - cur), link);
        free(cur);
        cur = next;
        struct stat st;
        if (!cur) return NULL;
        if (lstat(cur, &st) != 0) return errno == ENOENT ? cur : (free(cur), NULL);
        if (!S_ISLNK(st.st_mode)) {
            errno = EEXIST; /* it appeared meanwhile */
            free(cur);
            return NULL;
        }
    }
    free(cur);
    errno = ELOOP;
    return NULL;
}

/* 0, or nonzero having said why path (given as option, when known) cannot be an output
 * (CLI_EXIT_USAGE for a directory). */
static int resolve(const char *option, const char *path, resolved *r)
{
    memset(r, 0, sizeof *r);
    if (!path || strcmp(path, "-") == 0) {
        r->kind = TO_STDOUT;
        return 0;
    }
    if (stat(path, &r->st) == 0) {
        r->exists = 1;
        if (S_ISDIR(r->st.st_mode)) {
            cli_error("%s%s'%s' is a directory: give the path of a file to write (such as '%s/out')",
                      option ? option : "", option ? " " : "", path, path);
            return CLI_EXIT_USAGE;
        }
        r->kind = S_ISREG(r->st.st_mode) ? TO_REPLACE : TO_STREAM;
        /* a device, FIFO or socket is opened by the name given (/dev/stdout's link is magic) */
        r->target = r->kind == TO_REPLACE ? realpath(path, NULL) : strdup(path);
    } else if (errno == ENOENT) {
        struct stat lst;
        r->kind = TO_REPLACE;
        if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode)) r->target = dangling_target(path);
        else r->target = strdup(path); /* a missing directory is reported on creation */
    } else {
        cli_error("cannot write '%s': %s", path, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    if (!r->target) {
        cli_error("cannot resolve '%s': %s", path, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * the checks made before a command starts */

typedef struct {
    int exists;     /* compare dev and ino */
    dev_t dev;
    ino_t ino;
    int chr;        /* a character device */
    char *canonical; /* a file still to be created: where */
} identity;

/* A file to be created: its directory resolved, so that two spellings of one place compare
 * equal; the path itself when the directory does not resolve (creating it fails later). */
static char *canonical_new(const char *target)
{
    const char *slash = strrchr(target, '/');
    const char *base = slash ? slash + 1 : target;
    char *dir_name = slash ? (slash == target ? strdup("/") : strndup(target, (size_t)(slash - target))) : strdup(".");
    char *dir = dir_name ? realpath(dir_name, NULL) : NULL;
    free(dir_name);
    char *p = dir ? join_dir(dir, strlen(dir), base) : strdup(target);
    free(dir);
    return p;
}

/* 0, or nonzero having said why (an output that is a directory). */
static int identify(const char *option, const char *path, int is_output, identity *id)
{
    memset(id, 0, sizeof *id);
    if (!path || strcmp(path, "-") == 0) return 0;
    struct stat st;
    if (is_output) {
        resolved r;
        if (resolve(option, path, &r) != 0) return CLI_EXIT_USAGE;
        if (!r.exists) id->canonical = canonical_new(r.target);
        st = r.st;
        free(r.target);
        if (!r.exists && !id->canonical) {
            cli_error("out of memory");
            return CLI_EXIT_FAIL;
        }
        if (!r.exists) return 0;
    } else if (stat(path, &st) != 0) {
        return 0; /* a missing input is reported when it is read */
    }
    id->exists = 1, id->dev = st.st_dev, id->ino = st.st_ino, id->chr = S_ISCHR(st.st_mode);
    return 0;
}

static int same_file(const identity *a, const identity *b)
{
    if (a->exists && b->exists) return a->dev == b->dev && a->ino == b->ino && !a->chr;
    return a->canonical && b->canonical && strcmp(a->canonical, b->canonical) == 0;
}

int output_files_check(const named_path *outputs, int num_outputs, const named_path *inputs, int num_inputs)
{
    int n = num_outputs + num_inputs, rc = 0;
    identity *ids = calloc(n ? (size_t)n : 1, sizeof *ids);
    if (!ids) {
        cli_error("out of memory");
        return CLI_EXIT_FAIL;
    }
    for (int i = 0; i < n && !rc; i++)
    {
        const named_path *p = i < num_outputs ? &outputs[i] : &inputs[i - num_outputs];
        rc = identify(p->option, p->path, i < num_outputs, &ids[i]);
    }
    for (int i = 0; i < num_outputs && !rc; i++)
        for (int j = i + 1; j < n && !rc; j++) {
            if (!same_file(&ids[i], &ids[j])) continue;
            const named_path *a = &outputs[i], *b = j < num_outputs ? &outputs[j] : &inputs[j - num_outputs];
            if (j < num_outputs)
                cli_error("%s '%s' and %s '%s' are the same file: give each output a path of its own", a->option,
                          a->path, b->option, b->path);
            else
                cli_error("%s '%s' is the same file as the input %s '%s': writing it would destroy the input "
                          "before it is read; give another output path",
                          a->option, a->path, b->option, b->path);
            rc = CLI_EXIT_USAGE;
        }
    for (int i = 0; i < n; i++) free(ids[i].canonical);
    free(ids);
    return rc;
}

/* ----------------------------------------------------------------------------
 * opening, committing, aborting */

/* A name beside the target that nothing has: target.tmp.XXXXXX, created with mode. */
static int create_temporary(output_file *o, mode_t mode)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static _Atomic unsigned counter;
    size_t n = strlen(o->target) + 16;
    o->tmp = malloc(n);
    if (!o->tmp) {
        errno = ENOMEM;
        return -1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^ (uint64_t)ts.tv_sec;
    for (int attempt = 0; attempt < 100; attempt++) {
        x += 0x9e3779b97f4a7c15ull * (1 + atomic_fetch_add(&counter, 1));
        uint64_t r = x ^ x >> 31;
        char suffix[7];
        for (int k = 0; k < 6; k++, r /= 62) suffix[k] = letters[r % 62];
        suffix[6] = 0;
        snprintf(o->tmp, n, "%s.tmp.%s", o->target, suffix);
        int fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0) {
            register_temporary(o->tmp);
            return fd;
        }
        if (errno != EEXIST) break;
    }
    int err = errno;
    free(o->tmp);
    o->tmp = NULL;
    errno = err;
    return -1;
}

/* A Unix socket is not opened but connected to. */
static int connect_socket(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (const struct sockaddr *)&addr, sizeof addr) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        fd = -1;
    }
    return fd;
}

int output_file_open(output_file *o, const char *path)
{
    memset(o, 0, sizeof *o);
    resolved r;
    int rc = resolve(NULL, path, &r);
    if (rc) return rc;
    if (r.kind == TO_STDOUT) {
        o->fp = stdout;
        return 0;
    }
    o->path = strdup(path);
    if (!o->path) {
        free(r.target);
        cli_error("out of memory");
        return CLI_EXIT_FAIL;
    }
    int fd;
    if (r.kind == TO_STREAM) {
        /* written through: replacing a device node or FIFO with a file is never what was meant */
        fd = S_ISSOCK(r.st.st_mode) ? connect_socket(path) : open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        free(r.target);
        if (fd < 0) {
            cli_error("cannot open '%s' for writing: %s", path, strerror(errno));
            output_file_abort(o);
            return CLI_EXIT_FAIL;
        }
    } else {
        o->target = r.target;
        /* a new file gets 0666 less the umask, as any program's; a replaced one its old mode */
        fd = create_temporary(o, r.exists ? 0600 : 0666);
        if (fd < 0) {
            cli_error("cannot create a temporary file next to '%s': %s (is the directory there and writable?)",
                      o->target, strerror(errno));
            output_file_abort(o);
            return CLI_EXIT_FAIL;
        }
        if (r.exists) {
            /* the owner first: changing it may clear set-user-ID bits, which fchmod then restores.
             * Only root may give a file away, so a failure here is expected and harmless. */
            int owned = fchown(fd, r.st.st_uid, r.st.st_gid) == 0 || fchown(fd, (uid_t)-1, r.st.st_gid) == 0;
            (void)owned;
            if (fchmod(fd, r.st.st_mode & 07777) != 0) {
                cli_error("cannot give '%s' the mode of '%s': %s", o->tmp, o->target, strerror(errno));
                close(fd);
                output_file_abort(o);
                return CLI_EXIT_FAIL;
            }
        }
    }
    o->fp = fdopen(fd, "w");
    if (!o->fp) {
        cli_error("cannot open '%s' for writing: %s", path, strerror(errno));
        close(fd);
        output_file_abort(o);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

int output_file_commit(output_file *o)
{
    if (o->fp == stdout) {
        int bad = fflush(stdout) != 0 || ferror(stdout);
        o->fp = NULL;
        if (bad) cli_error("writing to standard output failed: %s", strerror(errno));
        return bad;
    }
    int bad = ferror(o->fp) || fflush(o->fp) != 0;
    int err = errno;
    /* the data reaches the disk before the name does, so that a crash leaves the old file or
     * the new one, never an empty one */
    if (!bad && o->tmp && fsync(fileno(o->fp)) != 0) bad = 1, err = errno;
    if (fclose(o->fp) != 0 && !bad) bad = 1, err = errno;
    o->fp = NULL;
    if (bad) {
        cli_error("writing '%s' failed: %s%s", o->path, strerror(err),
                  o->tmp ? " (disk full?); the file was left as it was" : "");
        output_file_abort(o);
        return 1;
    }
    if (o->tmp && rename(o->tmp, o->target) != 0) {
        cli_error("cannot rename '%s' to '%s': %s", o->tmp, o->target, strerror(errno));
        output_file_abort(o);
        return 1;
    }
    if (o->tmp) unregister_temporary(o->tmp);
    free(o->tmp);
    free(o->target);
    free(o->path);
    memset(o, 0, sizeof *o);
    return 0;
}

void output_file_abort(output_file *o)
{
    if (o->fp && o->fp != stdout) fclose(o->fp);
    o->fp = NULL;
    if (o->tmp) {
        unlink(o->tmp);
        unregister_temporary(o->tmp);
    }
    free(o->tmp);
    free(o->target);
    free(o->path);
    memset(o, 0, sizeof *o);
}

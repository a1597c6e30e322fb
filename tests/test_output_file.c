/* test_output_file.c: the tools' output files (tools/output_file.c): new files follow the umask,
 * replaced ones keep their mode and owner, a link's target is replaced and the link kept, FIFOs
 * and devices are written through, same-file outputs and directories are refused before anything
 * is written, and a signal mid-write leaves no temporary behind. Everything happens inside a
 * temporary directory: a device node is made there, never taken from /dev. */
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700 /* mknod */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/tap.h"
#include "tools/cli.h"
#include "tools/output_file.h"

static char dir[64];

static const char *at(const char *name)
{
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static void put_file(const char *path, const char *text, mode_t mode)
{
    FILE *fp = fopen(path, "w");
    if (fp) fputs(text, fp), fclose(fp);
    chmod(path, mode);
}

/* The file's text (up to 255 bytes), "" when it cannot be read. */
static const char *text_of(const char *path)
{
    static char buf[256];
    buf[0] = 0;
    FILE *fp = fopen(path, "r");
    if (!fp) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    buf[n] = 0;
    fclose(fp);
    return buf;
}

/* Opens path, writes text, commits: 0 when all of it succeeded. */
static int write_output(const char *path, const char *text)
{
    output_file o;
    if (output_file_open(&o, path)) return 1;
    fputs(text, o.fp);
    return output_file_commit(&o);
}

/* Temporaries left in the directory (names holding ".tmp."). */
static int temporaries_left(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

/* stderr goes to a file while `call` runs, then comes back; what was said is returned. */
static char said[1024];
static void capture_stderr(int on)
{
    static int saved = -1;
    fflush(stderr);
    if (on) {
        saved = dup(2);
        int fd = open(at("stderr"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        close(fd);
    } else {
        dup2(saved, 2);
        close(saved);
        snprintf(said, sizeof said, "%s", text_of(at("stderr")));
        said[strcspn(said, "\n")] = 0; /* one line of TAP */
        unlink(at("stderr"));
    }
}

static void new_files_follow_the_umask(void)
{
    const mode_t masks[] = {022, 027, 077};
    for (int i = 0; i < 3; i++) {
        mode_t old = umask(masks[i]);
        unlink(at("new"));
        int rc = write_output(at("new"), "fresh\n");
        umask(old);
        struct stat st;
        tap_ok(rc == 0 && stat(at("new"), &st) == 0 && (st.st_mode & 07777) == (0666 & ~masks[i]) &&
                   strcmp(text_of(at("new")), "fresh\n") == 0,
               "a new file under umask %03o is %03o (got %03o)", (unsigned)masks[i], (unsigned)(0666 & ~masks[i]),
               rc == 0 && stat(at("new"), &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0u);
    }
}

static void replaced_files_keep_mode_and_owner(void)
{
    put_file(at("kept"), "old\n", 0604);
    mode_t old = umask(077);
    int rc = write_output(at("kept"), "new\n");
    umask(old);
    struct stat st;
    tap_ok(rc == 0 && stat(at("kept"), &st) == 0 && (st.st_mode & 07777) == 0604 &&
               strcmp(text_of(at("kept")), "new\n") == 0,
           "a replaced 0604 file keeps its mode under umask 077 and holds the new text");
    chmod(at("kept"), 0755);
    rc = write_output(at("kept"), "again\n");
    tap_ok(rc == 0 && stat(at("kept"), &st) == 0 && (st.st_mode & 07777) == 0755, "and a 0755 one stays 0755");
    if (geteuid() != 0) {
        tap_ok(1, "a replaced file keeps its owner # SKIP not root: cannot make a file of another owner");
        return;
    }
    if (chown(at("kept"), 1234, 5678) != 0) {
        tap_ok(0, "chown for the owner test: %s", strerror(errno));
        return;
    }
    rc = write_output(at("kept"), "owned\n");
    tap_ok(rc == 0 && stat(at("kept"), &st) == 0 && st.st_uid == 1234 && st.st_gid == 5678,
           "a replaced file keeps its owner and group (root)");
}

static void links_are_followed(void)
{
    put_file(at("target"), "old\n", 0644);
    unlink(at("link"));
    if (symlink("target", at("link")) != 0) tap_diag("symlink: %s", strerror(errno));
    int rc = write_output(at("link"), "through the link\n");
    struct stat st;
    char to[64] = "";
    ssize_t n = readlink(at("link"), to, sizeof to - 1);
    if (n > 0) to[n] = 0;
    tap_ok(rc == 0 && lstat(at("link"), &st) == 0 && S_ISLNK(st.st_mode) && strcmp(to, "target") == 0,
           "the symbolic link is kept, pointing where it did");
    tap_is_str(text_of(at("target")), "through the link\n", "its target holds the output");

    /* a chain of two links whose end does not exist yet: the end is created */
    mkdir(at("sub"), 0755);
    unlink(at("dangling")), unlink(at("sub/hop")), unlink(at("sub/made"));
    if (symlink("sub/hop", at("dangling")) != 0 || symlink("made", at("sub/hop")) != 0)
        tap_diag("symlink: %s", strerror(errno));
    mode_t old = umask(022);
    rc = write_output(at("dangling"), "created\n");
    umask(old);
    tap_ok(rc == 0 && lstat(at("dangling"), &st) == 0 && S_ISLNK(st.st_mode) && lstat(at("sub/hop"), &st) == 0 &&
               S_ISLNK(st.st_mode) && strcmp(text_of(at("sub/made")), "created\n") == 0 &&
               stat(at("sub/made"), &st) == 0 && (st.st_mode & 07777) == 0644,
           "a dangling link's target is created (relative to each link's directory, 0644), the links kept");
}

static void fifos_and_devices_are_written_through(void)
{
    unlink(at("fifo"));
    if (mkfifo(at("fifo"), 0600) != 0) tap_diag("mkfifo: %s", strerror(errno));
    /* a reader first, so that opening the writing end does not wait */
    int rd = open(at("fifo"), O_RDONLY | O_NONBLOCK);
    int rc = write_output(at("fifo"), "down the pipe\n");
    char buf[64] = "";
    ssize_t n = rd >= 0 ? read(rd, buf, sizeof buf - 1) : -1;
    if (n > 0) buf[n] = 0;
    if (rd >= 0) close(rd);
    struct stat st;
    tap_ok(rc == 0 && strcmp(buf, "down the pipe\n") == 0, "a FIFO receives the output");
    tap_ok(lstat(at("fifo"), &st) == 0 && S_ISFIFO(st.st_mode) && temporaries_left() == 0,
           "and is still a FIFO, with no temporary beside it");

    if (geteuid() != 0) {
        tap_ok(1, "a character device is written through # SKIP not root: mknod needs root");
        return;
    }
    unlink(at("null"));
    int probe = -1;
    if (mknod(at("null"), S_IFCHR | 0666, makedev(1, 3)) != 0 || (probe = open(at("null"), O_WRONLY)) < 0) {
        tap_ok(1, "a character device is written through # SKIP no usable device node here (mknod refused or a "
                  "nodev file system): %s", strerror(errno));
        unlink(at("null"));
        return;
    }
    close(probe);
    rc = write_output(at("null"), "discarded\n");
    tap_ok(rc == 0 && lstat(at("null"), &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3) &&
               temporaries_left() == 0,
           "a character device is written through and stays the same device node");
    unlink(at("null"));
}

static void same_files_are_refused(void)
{
    put_file(at("in"), "input\n", 0644);
    unlink(at("in-link"));
    if (symlink("in", at("in-link")) != 0) tap_diag("symlink: %s", strerror(errno));
    named_path out = {"-o", at("in")}, in = {"LOADS", at("in")};
    capture_stderr(1);
    int rc = output_files_check(&out, 1, &in, 1);
    capture_stderr(0);
    tap_ok(rc == CLI_EXIT_USAGE && strstr(said, "-o") && strstr(said, "LOADS") && strstr(said, at("in")) &&
               strcmp(text_of(at("in")), "input\n") == 0,
           "an output that is its input is refused, naming both: %s", said);
    out.path = at("in-link");
    capture_stderr(1);
    rc = output_files_check(&out, 1, &in, 1);
    capture_stderr(0);
    tap_ok(rc == CLI_EXIT_USAGE, "also when the output is a link to the input");

    named_path two[2] = {{"--trace", at("sub/../both")}, {"--save-params", at("both")}};
    unlink(at("both"));
    capture_stderr(1);
    rc = output_files_check(two, 2, NULL, 0);
    capture_stderr(0);
    tap_ok(rc == CLI_EXIT_USAGE && strstr(said, "--trace") && strstr(said, "--save-params") && access(at("both"), F_OK) != 0,
           "two outputs to one new file, spelt two ways, are refused: %s", said);
    unlink(at("to-both"));
    if (symlink("both", at("to-both")) != 0) tap_diag("symlink: %s", strerror(errno));
    two[0].path = at("to-both");
    capture_stderr(1);
    rc = output_files_check(two, 2, NULL, 0);
    capture_stderr(0);
    tap_ok(rc == CLI_EXIT_USAGE, "and so are a dangling link and the file it would create");

    named_path fine_out[2] = {{"-o", at("out1")}, {"--svg", "-"}};
    named_path fine_in[2] = {{"LOADS", "-"}, {"--current", at("in")}};
    tap_ok(output_files_check(fine_out, 2, fine_in, 2) == 0, "distinct files and standard streams pass");
    if (geteuid() == 0 && mknod(at("tty"), S_IFCHR | 0666, makedev(1, 3)) == 0) {
        named_path dev_out = {"-o", at("tty")}, dev_in = {"LOADS", at("tty")};
        tap_ok(output_files_check(&dev_out, 1, &dev_in, 1) == 0,
               "a character device may be read and written (a terminal): nothing is destroyed");
        unlink(at("tty"));
    } else {
        tap_ok(1, "a character device may be input and output # SKIP not root: mknod needs root");
    }
}

static void directories_are_refused(void)
{
    named_path out = {"--svg", dir};
    capture_stderr(1);
    int rc = output_files_check(&out, 1, NULL, 0);
    capture_stderr(0);
    tap_ok(rc == CLI_EXIT_USAGE && strstr(said, "is a directory"), "a directory as output: exit 2 before anything (%s)",
           said);
    output_file o;
    capture_stderr(1);
    rc = output_file_open(&o, dir);
    capture_stderr(0);
    struct stat st;
    tap_ok(rc == CLI_EXIT_USAGE && stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && temporaries_left() == 0,
           "and opening one fails the same way, leaving it as it was");
}

/* A child writes to `name` without end; the parent ends it with sig while it writes. */
static void signal_removes_the_temporary(int sig, const char *signame)
{
    put_file(at("sig"), "before\n", 0644);
    int fds[2];
    if (pipe(fds) != 0) {
        tap_ok(0, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        alarm(20); /* never hang the suite */
        output_file o;
        if (output_file_open(&o, at("sig")) || !o.tmp) _exit(3);
        fputs("partial\n", o.fp);
        fflush(o.fp);
        char msg[300];
        int n = snprintf(msg, sizeof msg, "%s\n", o.tmp);
        if (write(fds[1], msg, (size_t)n) != n) _exit(4);
        for (;;) {
            fputs("more of a long output\n", o.fp);
            fflush(o.fp);
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    close(fds[1]);
    char tmp[300] = "";
    FILE *from = fdopen(fds[0], "r");
    if (!from || !fgets(tmp, sizeof tmp, from)) tmp[0] = 0;
    if (from) fclose(from);
    tmp[strcspn(tmp, "\n")] = 0;
    int existed = tmp[0] && access(tmp, F_OK) == 0;
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    tap_ok(existed && WIFSIGNALED(status) && WTERMSIG(status) == sig,
           "%s mid-write ends the writer with that signal (temporary seen: %d, status %#x)", signame, existed, status);
    tap_ok(tmp[0] && access(tmp, F_OK) != 0 && temporaries_left() == 0 && strcmp(text_of(at("sig")), "before\n") == 0,
           "%s: the temporary is removed and the old file is untouched", signame);
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s", "/tmp/dp-output-XXXXXX");
    const char *tmpdir = getenv("TMPDIR");
    if (tmpdir && strlen(tmpdir) < 30) snprintf(dir, sizeof dir, "%s/dp-output-XXXXXX", tmpdir);
    if (!mkdtemp(dir)) tap_skip_all("cannot make a temporary directory");
    cli_program = "test_output_file";
    /* as at a terminal, whatever the test was started from (a shell's background job ignores
     * SIGINT, and an ignored signal is left ignored), before the first output installs the
     * handler that the writers forked below inherit */
    signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL), signal(SIGHUP, SIG_DFL);
    tap_plan(26);
    new_files_follow_the_umask();
    replaced_files_keep_mode_and_owner();
    links_are_followed();
    fifos_and_devices_are_written_through();
    same_files_are_refused();
    directories_are_refused();
    signal_removes_the_temporary(SIGTERM, "SIGTERM");
    signal_removes_the_temporary(SIGINT, "SIGINT");
    signal_removes_the_temporary(SIGHUP, "SIGHUP");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", dir);
    return tap_done();
}

/*
 * nvc-hook-client: hands a container start to the resident hook helper without starting Python.
 *
 * Why it exists: with the hook helper running (nvc/commands/hook_helper.py), what is left of a container start
 * through nvc's hook is mostly the launcher's own Python interpreter, ~10 ms here, started only to read the state,
 * pass the descriptors and wait for the helper's answer. This program does exactly that part (the rules, the
 * checks and the work all stay in the helper's Python code, run once per start).
 *
 *     nvc-hook-client TOOL PYTHON LAUNCHER [ARG...]
 *
 * The launchers of nvidia-container-runtime-hook (TOOL "hook") and nvidia-container-cli (TOOL "cli") exec it
 * when a helper's socket exists; PYTHON is the interpreter the launcher would start with -I -S (it says which
 * install of nvc this start belongs to: the helper serves only its own), LAUNCHER the launcher's path ($0), ARG
 * its arguments. It speaks the protocol of nvc/hook_client.py (version 2) and sends the message the Python
 * launcher would send there, with what the interpreter would have made of this environment (tests/
 * test_hook_client_native.py compares the two).
 *
 * Any doubt before the helper has taken the start on (the same ones as nvc/hook_client.py, plus a locale or an
 * environment this program does not model): it execs LAUNCHER again with NVC_HELPER_CLIENT set in the
 * environment ("offered": the helper said no, do not ask again; "deferred": ask it the Python way) and, for the
 * hook, the state it read on stdin again. The launcher's Python part removes that variable before anything reads
 * the environment. Once the helper has taken the start on, its answer is final, as in nvc/hook_client.py.
 *
 * python_locale() models CPython 3.11-3.14's start-up (PEP 538 coercion, PEP 540 UTF-8 mode); a later version
 * that changes it (PEP 686 makes UTF-8 mode the default) shows up in the comparison test, run on the interpreter
 * the package ships.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define MAGIC "nvc-hook-helper 2\n"
#define SOCKET_NAME "hook.sock"
#define DEFAULT_CACHE_DIR "/run/nvc"
#define MARKER "NVC_HELPER_CLIENT"
#define ACCEPT_TIMEOUT_MS 30000 /* nvc/hook_client.py ACCEPT_TIMEOUT_SECONDS */
#define MAX_STATE (4 << 20)     /* the helper's MAX_MESSAGE: a larger one could not be sent anyway */

/* What became of the offer when the start is not the helper's: run it the usual way. */
enum fallback { OFFERED, DEFERRED };

struct buffer {
    char *data;
    size_t len, cap;
    int failed; /* out of memory: the start goes back to the launcher */
};

static const char *launcher;
static struct buffer state;
static int state_read;     /* stdin was read from: what was read goes back to the launcher with the rest */
static int state_complete; /* ... to its end */
static struct sigaction inherited_sigpipe;

/* The launcher's file name, as its messages name the tool. */
static const char *launcher_name(void)
{
    const char *slash = strrchr(launcher, '/');
    return slash ? slash + 1 : launcher;
}

static void trace(const char *fmt, ...)
{
    const char *on = getenv("NVC_LAUNCHER_TRACE");
    if (on == NULL || *on == '\0')
        return;
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    dprintf(2, "nvc-launcher: helper=%s (client)\n", text);
}

static void grow(struct buffer *b, size_t more)
{
    if (b->failed || b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) {
        b->failed = 1;
        return;
    }
    b->data = data;
    b->cap = cap;
}

static void put(struct buffer *b, const void *data, size_t len)
{
    grow(b, len);
    if (b->failed)
        return;
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void puts_(struct buffer *b, const char *text) { put(b, text, strlen(text)); }

/* A comma unless the object just opened. */
static void put_separator(struct buffer *b)
{
    if (!b->failed && b->len && b->data[b->len - 1] != '{')
        puts_(b, ",");
}

static void put_escape(struct buffer *b, unsigned code)
{
    char text[8];
    snprintf(text, sizeof text, "\\u%04x", code);
    put(b, text, 6);
}

/* The length of the well-formed UTF-8 sequence at s (Python's strict decoder: no overlong forms, no surrogates,
 * nothing above U+10FFFF), or 0. */
static size_t utf8_sequence(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A JSON string of the bytes s as Python decodes them: latin1 (the state: nvc/hook_client.py sends it so), or
 * UTF-8 with surrogateescape (the file system encoding in every locale this program models), where each byte of
 * no well-formed sequence becomes U+DC80 + its value, as the interpreter turns it into a str. */
static void put_string(struct buffer *b, const char *s, size_t len, int latin1)
{
    const unsigned char *u = (const unsigned char *)s;
    put(b, "\"", 1);
    for (size_t i = 0; i < len;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char text[2] = {'\\', (char)c};
            put(b, text, 2);
            i++;
        } else if (c < 0x20) {
            put_escape(b, c);
            i++;
        } else if (c < 0x80) {
            put(b, &u[i], 1);
            i++;
        } else if (latin1) {
            put_escape(b, c);
            i++;
        } else {
            size_t n = utf8_sequence(u + i, len - i);
            if (n) {
                put(b, &u[i], n);
                i += n;
            } else {
                put_escape(b, 0xDC00 + c);
                i++;
            }
        }
    }
    put(b, "\"", 1);
}

static void put_cstring(struct buffer *b, const char *s) { put_string(b, s, strlen(s), 0); }

/* What `PYTHON -I -S` would make of this locale (CPython's pre-initialisation, PEP 538 and 540): its output
 * encodings and error handlers, and the LC_CTYPE it would set in its own environment when it coerces the legacy
 * C locale (*coerced, or NULL). Returns 0 for a locale not modelled here (a non-UTF-8 one): that start is left to
 * the launcher's Python. */
static int python_locale(const char **stdout_errors, const char **coerced)
{
    static const char *const targets[] = {"C.UTF-8", "C.utf8", "UTF-8"};
    const char *all = getenv("LC_ALL");
    int lc_all_set = all != NULL && *all != '\0';
    *coerced = NULL;
    setlocale(LC_CTYPE, "");
    const char *loc = setlocale(LC_CTYPE, NULL);
    if (loc == NULL)
        return 0;
    int utf8_mode = strcmp(loc, "C") == 0 || strcmp(loc, "POSIX") == 0;
    if (!lc_all_set && strcmp(loc, "C") == 0) {
        for (size_t i = 0; i < sizeof targets / sizeof *targets; i++) {
            if (setlocale(LC_CTYPE, targets[i]) == NULL)
                continue;
            const char *codeset = nl_langinfo(CODESET);
            if (codeset == NULL || *codeset == '\0') {
                setlocale(LC_CTYPE, "");
                continue;
            }
            *coerced = targets[i];
            break;
        }
    }
    loc = setlocale(LC_CTYPE, NULL);
    if (loc == NULL)
        return 0;
    if (!utf8_mode && strcmp(nl_langinfo(CODESET), "UTF-8") != 0)
        return 0;
    int legacy_or_target = strcmp(loc, "C") == 0 || strcmp(loc, "POSIX") == 0;
    for (size_t i = 0; i < sizeof targets / sizeof *targets; i++)
        legacy_or_target |= strcmp(loc, targets[i]) == 0;
    *stdout_errors = utf8_mode || legacy_or_target ? "surrogateescape" : "strict";
    return 1;
}

/* The environment as the interpreter's os.environ would hold it, as a JSON object; 0 when it holds something
 * this program does not model (an entry without "=", a name given twice). */
static int put_environment(struct buffer *b, const char *coerced)
{
    int replaced = 0;
    puts_(b, "{");
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || eq == *e)
            return 0;
        size_t name_len = (size_t)(eq - *e);
        if (name_len == strlen(MARKER) && strncmp(*e, MARKER, name_len) == 0)
            continue; /* the launcher's Python part takes it out of the environment too (helper_probe.py) */
        for (char **other = environ; other != e; other++)
            if (strncmp(*other, *e, name_len + 1) == 0)
                return 0;
        put_separator(b);
        put_string(b, *e, name_len, 0);
        puts_(b, ":");
        if (coerced != NULL && name_len == 8 && strncmp(*e, "LC_CTYPE", 8) == 0) {
            put_cstring(b, coerced); /* setenv() replaces it where it stands */
            replaced = 1;
        } else
            put_cstring(b, eq + 1);
    }
    if (coerced != NULL && !replaced) {
        put_separator(b);
        puts_(b, "\"LC_CTYPE\":");
        put_cstring(b, coerced);
    }
    puts_(b, "}");
    return 1;
}

static int read_state(void)
{
    state_read = 1;
    for (;;) {
        grow(&state, 1 << 14);
        if (state.failed)
            return 0;
        ssize_t n = read(0, state.data + state.len, state.cap - state.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 0;
        if (n == 0)
            break;
        state.len += (size_t)n;
        if (state.len > MAX_STATE)
            return 0; /* the helper would not take it: the launcher gets all of it, read or not */
    }
    state_complete = 1;
    return 1;
}

/* All of data to fd, a file or the helper's socket (SIGPIPE is ignored from main's start on, so a closed peer is
 * an EPIPE here; the socket's send timeout bounds a write to it), or 0. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        data += n;
        len -= (size_t)n;
    }
    return 1;
}

/* A file holding what was read of stdin and the rest of it, at offset 0 (a memory file; a hidden temporary file
 * where memfd_create is not allowed), or -1. */
static int state_file(void)
{
    int fd = memfd_create("nvc-hook-state", 0);
    if (fd < 0)
        fd = open("/tmp", O_TMPFILE | O_RDWR, 0600);
    if (fd < 0)
        return -1;
    int ok = write_all(fd, state.data, state.len);
    char chunk[1 << 16];
    while (ok && !state_complete) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ok = n == 0;
            break;
        }
        ok = write_all(fd, chunk, (size_t)n);
    }
    if (!ok || lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Run the start the usual way: the launcher again, told what happened here, with the state it would have read
 * on its stdin (from a memory file: what this program read from the runtime's pipe is gone from it). */
static void fall_back(char **args, enum fallback why)
{
    if (state_read) {
        int fd = state_file();
        if (fd < 0 || dup2(fd, 0) < 0) {
            dprintf(2, "%s: helper error: cannot hand the container state back to the hook: %s\n", launcher_name(),
                    strerror(errno));
            exit(1);
        }
        if (fd != 0)
            close(fd);
    }
    setenv(MARKER, why == OFFERED ? "offered" : "deferred", 1);
    sigaction(SIGPIPE, &inherited_sigpipe, NULL);
    execv(launcher, args - 1); /* args - 1 is the launcher's path (main's argv[3]): its argv as it had it */
    dprintf(2, "%s: helper error: cannot run %s: %s\n", launcher_name(), launcher, strerror(errno));
    exit(127);
}

/* Up to count bytes (fewer when the helper closes first); -1 on an error or, with a timeout, none in time. */
static ssize_t receive(int sock, unsigned char *out, size_t count, int timeout_ms)
{
    size_t got = 0;
    while (got < count) {
        if (timeout_ms >= 0) {
            struct pollfd p = {.fd = sock, .events = POLLIN};
            int ready = poll(&p, 1, timeout_ms);
            if (ready < 0 && errno == EINTR)
                continue;
            if (ready <= 0) {
                errno = ready == 0 ? ETIMEDOUT : errno;
                return -1;
            }
        }
        ssize_t n = recv(sock, out + got, count - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static const char *reason(unsigned char r)
{
    switch (r) {
    case 'n': return "another namespace";
    case 'p': return "another install";
    case 'x': return "exec'd CLI";
    case 'm': return "bad message";
    case 't': return "unknown tool";
    case 'c': return "other confinement";
    case 'q': return "configure without --pid";
    case 'l': return "resource limits";
    default: return "unknown";
    }
}

static int applies(const char *tool, char **args, int count)
{
    if (strcmp(tool, "hook") == 0)
        return count == 1 && (strcmp(args[0], "prestart") == 0 || strcmp(args[0], "createRuntime") == 0);
    if (strcmp(tool, "cli") == 0) {
        for (int i = 0; i < count; i++)
            if (strcmp(args[i], "configure") == 0)
                return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argv[3][0] == '\0') {
        dprintf(2, "usage: nvc-hook-client hook|cli PYTHON LAUNCHER [ARG...] (run by nvc's launchers)\n");
        return 2;
    }
    const char *tool = argv[1], *python = argv[2];
    launcher = argv[3];
    char **args = argv + 4;
    /* Writing to a runtime's closed pipe must not kill the start (Python ignores SIGPIPE too); the launcher gets
     * the disposition this program inherited. */
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    sigaction(SIGPIPE, &ignore, &inherited_sigpipe);
    int count = argc - 4;
    /* Not a start the helper serves, or the helper turned off: the launcher as if this program were not here. */
    const char *off = getenv("NVC_NO_HELPER");
    if (!applies(tool, args, count) || (off != NULL && *off != '\0' && strcmp(off, "0") != 0))
        fall_back(args, DEFERRED);

    const char *directory = getenv("NVC_CACHE_DIR");
    if (directory == NULL || *directory == '\0')
        directory = DEFAULT_CACHE_DIR;
    if (directory[0] != '/')
        fall_back(args, OFFERED); /* the Python side turns a relative one down too */
    /* The cache directory's rule (nvc/private_files.py open_cache_dir): ours, not writable by others, no
     * symlink; then the socket in it: ours, 0600 or stricter; connected through the directory we checked. */
    int dir_fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (dir_fd < 0 || fstat(dir_fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()
        || (st.st_mode & 022)) {
        trace("untrusted directory");
        fall_back(args, OFFERED);
    }
    if (fstatat(dir_fd, SOCKET_NAME, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        trace("absent");
        fall_back(args, OFFERED);
    }
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
        trace("untrusted socket");
        fall_back(args, OFFERED);
    }
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* A helper too stuck to read the message is one that would not answer either (ACCEPT_TIMEOUT_MS). */
    struct timeval send_timeout = {.tv_sec = ACCEPT_TIMEOUT_MS / 1000};
    if (sock >= 0)
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof address.sun_path, "/proc/self/fd/%d/%s", dir_fd, SOCKET_NAME);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, sizeof address) != 0) {
        trace("not listening");
        fall_back(args, OFFERED);
    }
    close(dir_fd);
    if (strcmp(tool, "hook") == 0 && !read_state()) {
        trace("error");
        fall_back(args, DEFERRED);
    }

    const char *stdout_errors, *coerced;
    if (!python_locale(&stdout_errors, &coerced)) {
        trace("unmodelled locale");
        fall_back(args, DEFERRED);
    }
    mode_t mask = umask(077);
    umask(mask);
    /* The message, built in place: the protocol's magic line, the body's length (little-endian, filled in once the
     * body is there), the body. */
    struct buffer message = {0};
    puts_(&message, MAGIC);
    put(&message, "\0\0\0\0", 4);
    size_t body_start = message.len;
    puts_(&message, "{\"python\":");
    put_cstring(&message, python);
    puts_(&message, ",\"tool\":");
    put_cstring(&message, tool);
    puts_(&message, ",\"argv0\":");
    put_cstring(&message, launcher);
    puts_(&message, ",\"argv\":[");
    for (int i = 0; i < count; i++) {
        if (i)
            puts_(&message, ",");
        put_cstring(&message, args[i]);
    }
    puts_(&message, "],\"env\":");
    int environment_ok = put_environment(&message, coerced);
    char number[32];
    snprintf(number, sizeof number, ",\"umask\":%u,", (unsigned)mask);
    puts_(&message, number);
    puts_(&message, "\"stdio\":[\"utf-8\",\"");
    puts_(&message, stdout_errors);
    puts_(&message, "\",\"utf-8\",\"backslashreplace\"],\"state\":");
    put_string(&message, state.data, state.len, 1);
    puts_(&message, "}");
    size_t body_len = message.len - body_start;
    if (!environment_ok || message.failed || body_len > UINT32_MAX) {
        trace(environment_ok ? "error" : "unmodelled environment");
        fall_back(args, DEFERRED);
    }
    for (int i = 0; i < 4; i++)
        message.data[body_start - 4 + i] = (char)((body_len >> (8 * i)) & 0xFF);
    int cwd_fd = open(".", O_PATH | O_CLOEXEC);
    if (cwd_fd < 0) {
        trace("error");
        fall_back(args, DEFERRED);
    }
    int fds[4] = {0, 1, 2, cwd_fd};
    union {
        char space[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = message.data, .iov_len = message.len};
    struct msghdr header = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                            .msg_controllen = sizeof control.space};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(sock, &header, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 || !write_all(sock, message.data + sent, message.len - (size_t)sent)) {
        trace("error");
        fall_back(args, OFFERED);
    }
    close(cwd_fd);

    unsigned char reply[2];
    ssize_t got = receive(sock, reply, 1, ACCEPT_TIMEOUT_MS);
    if (got < 0) {
        trace(errno == ETIMEDOUT ? "no answer" : "error");
        fall_back(args, OFFERED);
    }
    if (got == 1 && reply[0] == 'A') {
        /* Within the time we wait: from "go" on the start is the helper's, and its answer final. */
        if (!write_all(sock, "G", 1)) {
            trace("error");
            fall_back(args, OFFERED);
        }
        got = receive(sock, reply, 2, -1);
        if (got == 2 && reply[0] == 'C') {
            trace("ran");
            return reply[1];
        }
        if (got == 2 && reply[0] == 'D') {
            /* Declined before anything ran (the hook would exec an external CLI): the launcher runs it. */
            trace("declined (%s)", reason(reply[1]));
            fall_back(args, OFFERED);
        }
        trace("gone before it reported");
        dprintf(2, "%s: helper error: the hook helper ended this start without a result "
                   "(see its log: journalctl -u nvc-hook-helper)\n", launcher_name());
        return 1;
    }
    if (got == 1 && receive(sock, reply + 1, 1, ACCEPT_TIMEOUT_MS) == 1 && reply[0] == 'D') {
        trace("declined (%s)", reason(reply[1]));
        fall_back(args, OFFERED);
    }
    trace("refused"); /* closed without a word: not a caller it serves, or it is going away */
    fall_back(args, OFFERED);
    return 1; /* not reached */
}

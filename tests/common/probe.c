/* The hostile probe of tests/confine.rs (issue 11, confinement). Run inside a build step, it
 * tries what a step must not be able to do, and what it must still be able to do, and prints one
 * line per check:
 *
 *   ARCH.NAME ok [NOTE]      the check passed
 *   ARCH.NAME FAIL WHAT      it did not, and what happened instead
 *   ARCH.KEY = VALUE         a fact tests/common/hostile.rs judges (capabilities, resolv.conf)
 *
 * and `ARCH.done ok` last. ARCH is x86_64, or i386 for the same source built with -m32: every
 * raw call goes through syscall(SYS_...) with <sys/syscall.h>'s numbers, so the i386 build makes
 * i386 calls (the compat entry points a seccomp filter must cover as well).
 *
 * Every attempt is harmless when the kernel lets it through: arguments are chosen so that the
 * call fails after its permission checks (EINVAL, EFAULT, EBADF, ENOENT: a bad magic number, a
 * NULL pointer, a missing path), files are opened for writing but never written, and calls that
 * change the process (namespaces, mounts) run in a forked child. Today's unconfined steps let
 * all of them through; the checks then fail with the errno the kernel gave instead of EPERM.
 * Still, the checks are meant for a step's namespaces, not a host: without ENVC_PROBE_IN_STEP
 * set they refuse to run.
 *
 *   ENVC_PROBE_IN_STEP=1 envc-probe checks [--net] [--marker TEXT]
 *       every check; --net: the step has the host's network (resolv.conf checks) rather than
 *       its own loopback (ICMP echo check); --marker: text of the step's command that PID 1's
 *       command line must not hold.
 *   envc-probe euid
 *       prints `euid N` (a setuid copy of the probe shows whether setuid took effect).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Numbers newer than some headers: the same on x86_64 and i386 (the unified table from 424). */
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_fspick
#define SYS_fspick 433
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

#if defined(__i386__)
static const char *ARCH = "i386";
#elif defined(__x86_64__)
static const char *ARCH = "x86_64";
#else
static const char *ARCH = "other";
#endif

static void line(const char *name, const char *verdict, const char *fmt, va_list ap) {
    printf("%s.%s %s", ARCH, name, verdict);
    if (fmt && *fmt) {
        putchar(' ');
        vprintf(fmt, ap);
    }
    putchar('\n');
    fflush(stdout);
}

static void ok(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line(name, "ok", fmt, ap);
    va_end(ap);
}

static void fail(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line(name, "FAIL", fmt, ap);
    va_end(ap);
}

static void info(const char *key, const char *value) {
    printf("%s.%s = %s\n", ARCH, key, value);
    fflush(stdout);
}

/* The symbolic name of an errno value. */
static const char *ename(int e) {
    static char buf[32];
    const char *n = strerrorname_np(e);
    if (n)
        return n;
    snprintf(buf, sizeof buf, "errno %d", e);
    return buf;
}

/* A raw call's result: its return value, or -errno. */
static long ret(long r) { return r < 0 ? -errno : r; }

/* Runs f in a forked child. Gives 0 when the call succeeded, -errno when it failed, and
 * KILLED - N when signal N ended the child (a filter that kills instead of failing the call). */
#define KILLED (-1000)
#define NO_FORK (-2000)
static long in_child(long (*f)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return NO_FORK - errno;
    if (pid == 0) {
        long r = f();
        _exit(r >= 0 ? 0 : (int)(-r > 250 ? 250 : -r));
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return NO_FORK - errno;
    if (WIFSIGNALED(st))
        return KILLED - WTERMSIG(st);
    return -(long)WEXITSTATUS(st);
}

/* What a result says, for a FAIL line. */
static const char *what(long r) {
    static char buf[96];
    if (r >= 0)
        snprintf(buf, sizeof buf, "succeeded");
    else if (r <= NO_FORK)
        snprintf(buf, sizeof buf, "could not fork to try it: %s", ename((int)(NO_FORK - r)));
    else if (r <= KILLED)
        snprintf(buf, sizeof buf, "killed by signal %ld", KILLED - r);
    else
        snprintf(buf, sizeof buf, "failed with %s", ename((int)-r));
    return buf;
}

/* The call must fail with `want`. */
static void deny(const char *name, long (*f)(void), int want) {
    long r = in_child(f);
    if (r == -want)
        ok(name, "%s", ename(want));
    else
        fail(name, "%s (want %s)", what(r), ename(want));
}

/* The call must succeed. */
static void allow(const char *name, long (*f)(void)) {
    long r = in_child(f);
    if (r == 0)
        ok(name, "");
    else
        fail(name, "%s (want success)", what(r));
}

/* The argument of the parameterised calls below (set before in_child forks). */
static unsigned long g_arg;

#define SCRATCH "/tmp/.envc-probe-mnt"

/* -- what must be denied ------------------------------------------------------------------ */

static long f_mount(void) {
    mkdir(SCRATCH, 0700);
    long r = ret(syscall(SYS_mount, "none", SCRATCH, "tmpfs", 0UL, NULL));
    if (r == 0)
        syscall(SYS_umount2, SCRATCH, MNT_DETACH);
    return r;
}
/* /etc is no mount point: EINVAL if the call gets through. */
static long f_umount2(void) { return ret(syscall(SYS_umount2, "/etc", 0)); }
#ifdef SYS_umount
/* i386's oldumount, without flags. */
static long f_umount(void) { return ret(syscall(SYS_umount, "/etc")); }
#endif
static long f_pivot_root(void) {
    return ret(syscall(SYS_pivot_root, "/nonexistent-envc-probe", "/nonexistent-envc-probe"));
}
/* On /dev/null, not a terminal: harmless if let through (ENOTTY). */
static long f_tiocsti(void) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    char c = ':';
    if (fd < 0)
        return -errno;
    return ret(ioctl(fd, TIOCSTI, &c));
}
static long f_tioclinux(void) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    char c = 0;
    if (fd < 0)
        return -errno;
    return ret(ioctl(fd, TIOCLINUX, &c));
}
static long f_setns(void) {
    int fd = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    return ret(syscall(SYS_setns, fd, CLONE_NEWUTS));
}
static long f_unshare(void) { return ret(syscall(SYS_unshare, g_arg)); }
static long f_clone(void) {
    long r = syscall(SYS_clone, g_arg | SIGCHLD, 0UL, 0UL, 0UL, 0UL);
    if (r == 0)
        _exit(0);
    if (r < 0)
        return -errno;
    waitpid((pid_t)r, NULL, 0);
    return 0;
}
/* struct clone_args up to its first version's end (CLONE_ARGS_SIZE_VER0). */
struct clone_args0 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};
static long f_clone3(void) {
    struct clone_args0 a;
    memset(&a, 0, sizeof a);
    a.flags = g_arg;
    a.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &a, sizeof a);
    if (r == 0)
        _exit(0);
    if (r < 0)
        return -errno;
    waitpid((pid_t)r, NULL, 0);
    return 0;
}
/* More segments than KEXEC_SEGMENT_MAX and unknown flags: EINVAL before anything loads. */
static long f_kexec_load(void) {
    return ret(syscall(SYS_kexec_load, 0UL, 1000UL, NULL, 0x7ff00000UL));
}
/* An empty image: ENOEXEC. */
static long f_init_module(void) { return ret(syscall(SYS_init_module, NULL, 0UL, "")); }
static long f_finit_module(void) { return ret(syscall(SYS_finit_module, -1, "", 0)); }
static long f_delete_module(void) {
    return ret(syscall(SYS_delete_module, "envc_probe_no_such_module", O_NONBLOCK));
}
static long f_bpf(void) { return ret(syscall(SYS_bpf, 0x7fff, NULL, 0)); }
static long f_perf_event_open(void) {
    return ret(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0UL));
}
static long f_keyctl(void) { return ret(syscall(SYS_keyctl, 0x7fff, 0UL, 0UL, 0UL, 0UL)); }
static long f_add_key(void) { return ret(syscall(SYS_add_key, NULL, NULL, NULL, 0UL, 0)); }
static long f_request_key(void) { return ret(syscall(SYS_request_key, NULL, NULL, NULL, 0)); }
static long f_userfaultfd(void) { return ret(syscall(SYS_userfaultfd, O_CLOEXEC)); }
static long f_open_by_handle_at(void) {
    return ret(syscall(SYS_open_by_handle_at, -1, NULL, 0));
}
static long f_io_uring_setup(void) { return ret(syscall(SYS_io_uring_setup, 1, NULL)); }
static long f_fanotify_init(void) { return ret(syscall(SYS_fanotify_init, 0, O_RDONLY)); }
/* SYSLOG_ACTION_SIZE_BUFFER: only reads the buffer's size. */
static long f_syslog(void) { return ret(syscall(SYS_syslog, 10, NULL, 0)); }
static long f_acct(void) { return ret(syscall(SYS_acct, "/nonexistent-envc-probe")); }
/* No device and not Q_SYNC: ENODEV. */
static long f_quotactl(void) { return ret(syscall(SYS_quotactl, 0, NULL, 0, NULL)); }
static long f_swapon(void) { return ret(syscall(SYS_swapon, "/nonexistent-envc-probe", 0)); }
static long f_swapoff(void) { return ret(syscall(SYS_swapoff, "/nonexistent-envc-probe")); }
/* Without the magic numbers: EINVAL, never a reboot. */
static long f_reboot(void) { return ret(syscall(SYS_reboot, 0, 0, 0, NULL)); }
/* Neither time nor zone: changes nothing. */
static long f_settimeofday(void) { return ret(syscall(SYS_settimeofday, NULL, NULL)); }
static long f_clock_settime(void) {
    return ret(syscall(SYS_clock_settime, CLOCK_REALTIME, NULL));
}
static long f_adjtimex(void) { return ret(syscall(SYS_adjtimex, NULL)); }
static long f_clock_adjtime(void) {
    return ret(syscall(SYS_clock_adjtime, CLOCK_REALTIME, NULL));
}
#if defined(__i386__) && defined(SYS_clock_settime64)
static long f_clock_settime64(void) {
    return ret(syscall(SYS_clock_settime64, CLOCK_REALTIME, NULL));
}
#endif
#if defined(__i386__) && defined(SYS_clock_adjtime64)
static long f_clock_adjtime64(void) {
    return ret(syscall(SYS_clock_adjtime64, CLOCK_REALTIME, NULL));
}
#endif
/* Level 4 does not exist: EINVAL. */
static long f_iopl(void) { return ret(syscall(SYS_iopl, 4)); }
/* An empty range: EINVAL. */
static long f_ioperm(void) { return ret(syscall(SYS_ioperm, 0UL, 0UL, 1)); }
static long f_open_tree(void) { return ret(syscall(SYS_open_tree, AT_FDCWD, "/", O_CLOEXEC)); }
static long f_move_mount(void) { return ret(syscall(SYS_move_mount, -1, "", -1, "", 0)); }
static long f_fsopen(void) { return ret(syscall(SYS_fsopen, "tmpfs", 1 /* FSOPEN_CLOEXEC */)); }
static long f_fsconfig(void) { return ret(syscall(SYS_fsconfig, -1, 0, "ro", NULL, 0)); }
static long f_fsmount(void) { return ret(syscall(SYS_fsmount, -1, 0, 0)); }
static long f_fspick(void) {
    return ret(syscall(SYS_fspick, AT_FDCWD, "/nonexistent-envc-probe", 0));
}
/* A zero size: EINVAL. */
static long f_mount_setattr(void) { return ret(syscall(SYS_mount_setattr, -1, "", 0, NULL, 0)); }
static long f_mknod(void) {
    const char *p = "/tmp/.envc-probe-node";
    /* g_arg 0: /dev/null's numbers; 1: a block device, loop0's. */
    long r = ret(mknod(p, (mode_t)(g_arg ? S_IFBLK : S_IFCHR) | 0600,
                       g_arg ? makedev(7, 0) : makedev(1, 3)));
    unlink(p);
    return r;
}
#ifdef __i386__
/* mount through `int $0x80` itself, whatever entry glibc's syscall() uses. */
static long f_int80_mount(void) {
    long r;
    mkdir(SCRATCH, 0700);
    __asm__ volatile("int $0x80"
                     : "=a"(r)
                     : "0"((long)SYS_mount), "b"("none"), "c"(SCRATCH), "d"("tmpfs"), "S"(0L),
                       "D"(0L)
                     : "memory");
    if (r == 0)
        syscall(SYS_umount2, SCRATCH, MNT_DETACH);
    return r;
}
#endif
#ifdef __x86_64__
/* mount through the x32 ABI: a filter must not take it for an x86_64 call it allows. */
static long f_x32_mount(void) {
    mkdir(SCRATCH, 0700);
    long r = ret(syscall(0x40000000L | SYS_mount, "none", SCRATCH, "tmpfs", 0UL, NULL));
    if (r == 0)
        syscall(SYS_umount2, SCRATCH, MNT_DETACH);
    return r;
}
#endif
/* A remount of /sys that gets through is undone: /sys gets its own flags back. */
static long f_sys_remount(void) {
    struct statvfs before;
    if (statvfs("/sys", &before) < 0)
        return -errno;
    long r = ret(syscall(SYS_mount, NULL, "/sys", NULL, (unsigned long)g_arg, NULL));
    if (r == 0) {
        unsigned long keep = ST_RDONLY | ST_NOSUID | ST_NODEV | ST_NOEXEC | ST_NOATIME |
                             ST_NODIRATIME | ST_RELATIME;
        syscall(SYS_mount, NULL, "/sys", NULL, MS_REMOUNT | MS_BIND | (before.f_flag & keep),
                NULL);
    }
    return r;
}

/* -- what must still work ----------------------------------------------------------------- */

static long f_fork(void) {
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    if (p < 0)
        return -errno;
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -ECHILD;
}
static long f_ptrace_child(void) {
    static volatile long word = 0x5eed;
    pid_t c = fork();
    if (c < 0)
        return -errno;
    if (c == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
            _exit(100 + (errno & 0x7f));
        raise(SIGSTOP);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    if (!WIFSTOPPED(st)) {
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
        return code >= 100 ? -(code - 100) : -ECHILD;
    }
    long r = 0;
    errno = 0;
    long peek = ptrace(PTRACE_PEEKDATA, c, (void *)&word, NULL);
    if (errno)
        r = -errno;
    else if (peek != word)
        r = -EIO;
    if (ptrace(PTRACE_CONT, c, NULL, NULL) < 0) {
        if (!r)
            r = -errno;
        kill(c, SIGKILL);
    }
    waitpid(c, &st, 0);
    return r;
}
static void *thread_main(void *arg) { return arg; }
/* pthread_create: glibc tries clone3 first and falls back to clone on ENOSYS. */
static long f_thread(void) {
    pthread_t t;
    int e = pthread_create(&t, NULL, thread_main, NULL);
    if (e)
        return -e;
    pthread_join(t, NULL);
    return 0;
}
/* posix_spawn: clone(CLONE_VM | CLONE_VFORK). */
static long f_spawn(void) {
    pid_t p;
    char *argv[] = {"true", NULL};
    char *envp[] = {NULL};
    int e = posix_spawn(&p, "/bin/true", NULL, NULL, argv, envp);
    if (e)
        return -e;
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -ECHILD;
}
static long f_mkfifo(void) {
    const char *p = "/tmp/.envc-probe-fifo";
    long r = ret(mkfifo(p, 0600));
    unlink(p);
    return r;
}

/* -- checks that read the process and its root -------------------------------------------- */

/* Only 0, 1 and 2 are open (apart from the listing's own descriptor). A directory descriptor
 * from outside is used the way an attacker would: a file (.envc-escape-ARCH-TIME, new on every
 * run) is created through it. */
static void check_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        fail("fds", "cannot list /proc/self/fd: %s", ename(errno));
        return;
    }
    char extra[2048] = "";
    size_t used = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || fd == dirfd(d) || fd <= 2)
            continue;
        char link[PATH_MAX + 1] = "?";
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%ld", fd);
        ssize_t n = readlink(path, link, PATH_MAX);
        if (n >= 0)
            link[n] = 0;
        const char *escaped = "";
        struct stat st;
        char escape[96];
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        snprintf(escape, sizeof escape, ".envc-escape-%s-%lld%09ld", ARCH, (long long)now.tv_sec,
                 (long)now.tv_nsec);
        if (fstat((int)fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            int w = openat((int)fd, escape, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (w >= 0) {
                close(w);
                escaped = ", a directory: created a file in it";
            }
        }
        if (used < sizeof extra)
            used += snprintf(extra + used, sizeof extra - used, "%s%ld -> %s%s",
                             used ? "; " : "", fd, link, escaped);
    }
    closedir(d);
    if (used)
        fail("fds", "inherited descriptors beyond 0, 1, 2: %s", extra);
    else
        ok("fds", "");
}

/* The capability sets and the seccomp and no_new_privs state, for the judge. */
static void report_status(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        fail("status", "cannot read /proc/self/status: %s", ename(errno));
        return;
    }
    char l[256];
    static const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                                 "Seccomp"};
    while (fgets(l, sizeof l, f)) {
        for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
            size_t k = strlen(keys[i]);
            if (strncmp(l, keys[i], k) == 0 && l[k] == ':') {
                char *v = l + k + 1;
                v += strspn(v, " \t");
                v[strcspn(v, "\n")] = 0;
                char key[32];
                snprintf(key, sizeof key, "status.%s", keys[i]);
                info(key, v);
            }
        }
    }
    fclose(f);
}

/* The whole of a file (NUL-terminated; the length in *len). NULL with errno on failure. */
static char *slurp(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

/* The step's command does not travel in PID 1's arguments (the sandbox spec is not in argv). */
static void check_marker(const char *marker) {
    size_t n;
    char *cmd = slurp("/proc/1/cmdline", &n);
    if (!cmd) {
        ok("pid1_cmdline", "unreadable: %s", ename(errno));
        return;
    }
    if (memmem(cmd, n, marker, strlen(marker))) {
        for (size_t i = 0; i < n; i++)
            if (!cmd[i])
                cmd[i] = ' ';
        fail("pid1_cmdline", "PID 1's command line (%zu bytes) holds the step's command: %.100s",
             n, cmd);
    } else {
        ok("pid1_cmdline", "%zu bytes", n);
    }
    free(cmd);
}

/* The first regular file below dir (depth-first, at most `depth` levels), one with a write
 * permission bit if there is one. */
static int find_file(const char *dir, int depth, char *out, int want_writable) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    char p[PATH_MAX];
    while (!found && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) < 0)
            continue;
        if (S_ISREG(st.st_mode) && (!want_writable || (st.st_mode & 0222))) {
            strcpy(out, p);
            found = 1;
        } else if (S_ISDIR(st.st_mode) && depth > 0) {
            found = find_file(p, depth - 1, out, want_writable);
        }
    }
    closedir(d);
    return found;
}

static int refused(int e) { return e == EROFS || e == EACCES || e == EPERM; }

/* path is read-only: opening a file in it for writing (never writing) fails with EROFS, EACCES
 * or EPERM; in a directory without files, creating one fails. */
static void check_ro(const char *path) {
    char name[64], file[PATH_MAX];
    snprintf(name, sizeof name, "ro:%s", path);
    struct stat st;
    if (lstat(path, &st) < 0) {
        ok(name, "absent");
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        if (!find_file(path, 4, file, 1) && !find_file(path, 4, file, 0)) {
            snprintf(file, sizeof file, "%s/.envc-probe", path);
            int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd >= 0) {
                close(fd);
                unlink(file);
                fail(name, "created %s", file);
            } else {
                ok(name, "no file in it; creating one: %s", ename(errno));
            }
            return;
        }
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    int fd = open(file, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        fail(name, "opened %s for writing", file);
    } else if (refused(errno)) {
        ok(name, "%s: %s", file, ename(errno));
    } else {
        fail(name, "opening %s for writing failed with %s (want EROFS, EACCES or EPERM)", file,
             ename(errno));
    }
}

/* path reads as empty and is not procfs's own file (masked, e.g. with /dev/null). */
static void check_masked(const char *path) {
    char name[64];
    snprintf(name, sizeof name, "masked:%s", path);
    struct stat st, proc;
    if (stat(path, &st) < 0) {
        ok(name, "absent (%s)", ename(errno));
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ok(name, "cannot be opened: %s", ename(errno));
        return;
    }
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    int e = errno;
    close(fd);
    if (n > 0)
        fail(name, "read %zd bytes", n);
    else if (stat("/proc", &proc) == 0 && st.st_dev == proc.st_dev && !S_ISCHR(st.st_mode))
        fail(name, "reads %s but is procfs's own file, not masked", n == 0 ? "empty" : ename(e));
    else
        ok(name, "");
}

/* path is an empty directory, or absent. */
static void check_empty(const char *path) {
    char name[64];
    snprintf(name, sizeof name, "empty:%s", path);
    DIR *d = opendir(path);
    if (!d) {
        ok(name, "absent (%s)", ename(errno));
        return;
    }
    char list[512] = "";
    size_t used = 0;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (count++ < 6 && used < sizeof list)
            used += snprintf(list + used, sizeof list - used, " %s", e->d_name);
    }
    closedir(d);
    if (count)
        fail(name, "lists %d entries:%s%s", count, list, count > 6 ? " ..." : "");
    else
        ok(name, "");
}

/* Network steps: the host's resolv.conf, read-only. */
static void check_resolv(void) {
    const char *p = "/etc/resolv.conf";
    size_t n;
    char *c = slurp(p, &n);
    if (!c) {
        info("resolv", "absent");
    } else {
        char *hex = malloc(2 * n + 1);
        for (size_t i = 0; i < n; i++)
            sprintf(hex + 2 * i, "%02x", (unsigned char)c[i]);
        hex[2 * n] = 0;
        info("resolv", n ? hex : "empty");
        free(hex);
        free(c);
    }
    int fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        fail("resolv_write", "opened %s for writing", p);
    } else if (refused(errno)) {
        ok("resolv_write", "%s", ename(errno));
    } else {
        fail("resolv_write", "opening %s for writing failed with %s (want EROFS, EACCES or EPERM)",
             p, ename(errno));
    }
    /* Setting its times is a write to it too (harmless: the test puts them back). */
    if (utimensat(AT_FDCWD, p, NULL, 0) == 0)
        fail("resolv_touch", "set the times of %s", p);
    else if (refused(errno))
        ok("resolv_touch", "%s", ename(errno));
    else
        fail("resolv_touch", "failed with %s (want EROFS, EACCES or EPERM)", ename(errno));
}

/* Steps without network: an ICMP echo to loopback over an ICMP datagram socket (what ping uses
 * without CAP_NET_RAW; needs net.ipv4.ping_group_range to include the group). */
static void check_ping(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (s < 0) {
        fail("ping_dgram", "socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP): %s", ename(errno));
        return;
    }
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct icmphdr h;
    memset(&h, 0, sizeof h);
    h.type = ICMP_ECHO;
    h.un.echo.sequence = htons(1);
    if (sendto(s, &h, sizeof h, 0, (struct sockaddr *)&to, sizeof to) < 0) {
        fail("ping_dgram", "sendto 127.0.0.1: %s", ename(errno));
        close(s);
        return;
    }
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, 3000) != 1) {
        fail("ping_dgram", "no echo reply from 127.0.0.1 within 3 s");
        close(s);
        return;
    }
    unsigned char buf[256];
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n < (ssize_t)sizeof h || buf[0] != ICMP_ECHOREPLY)
        fail("ping_dgram", "unexpected reply (%zd bytes, type %d)", n, n > 0 ? buf[0] : -1);
    else
        ok("ping_dgram", "");
    close(s);
}

struct ns {
    const char *name;
    unsigned long flag;
    int clone_too;
};

static const struct ns NAMESPACES[] = {
    {"newns", CLONE_NEWNS, 1},         {"newuts", CLONE_NEWUTS, 1},
    {"newipc", CLONE_NEWIPC, 1},       {"newnet", CLONE_NEWNET, 1},
    {"newpid", CLONE_NEWPID, 1},       {"newuser", CLONE_NEWUSER, 1},
    {"newcgroup", CLONE_NEWCGROUP, 1}, {"newtime", CLONE_NEWTIME, 0},
};

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "euid")) {
        printf("euid %d\n", (int)geteuid());
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "checks")) {
        fprintf(stderr, "usage: %s checks [--net] [--marker TEXT] | %s euid\n", argv[0], argv[0]);
        return 2;
    }
    /* The checks mount, remount /sys and touch /etc/resolv.conf when nothing stops them: never
     * on a host by mistake. The hostile steps set this. */
    if (!getenv("ENVC_PROBE_IN_STEP")) {
        fprintf(stderr, "%s: the checks run inside a build step only (ENVC_PROBE_IN_STEP=1)\n",
                argv[0]);
        return 2;
    }
    int net = 0;
    const char *marker = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--net"))
            net = 1;
        else if (!strcmp(argv[i], "--marker") && i + 1 < argc)
            marker = argv[++i];
    }
    /* First, before this process opens anything. */
    check_fds();
    report_status();
    if (marker)
        check_marker(marker);

    /* Denied: EPERM (clone3: ENOSYS, so that libc falls back to clone). */
    deny("mount", f_mount, EPERM);
    deny("umount2", f_umount2, EPERM);
#ifdef SYS_umount
    deny("umount", f_umount, EPERM);
#endif
#ifdef __i386__
    deny("int80_mount", f_int80_mount, EPERM);
#endif
    deny("pivot_root", f_pivot_root, EPERM);
    deny("setns", f_setns, EPERM);
    deny("tiocsti", f_tiocsti, EPERM);
    deny("tioclinux", f_tioclinux, EPERM);
    for (size_t i = 0; i < sizeof NAMESPACES / sizeof *NAMESPACES; i++) {
        char name[64];
        g_arg = NAMESPACES[i].flag;
        snprintf(name, sizeof name, "unshare_%s", NAMESPACES[i].name);
        deny(name, f_unshare, EPERM);
        if (NAMESPACES[i].clone_too) {
            snprintf(name, sizeof name, "clone_%s", NAMESPACES[i].name);
            deny(name, f_clone, EPERM);
        }
    }
    g_arg = 0;
    deny("clone3", f_clone3, ENOSYS);
    deny("kexec_load", f_kexec_load, EPERM);
    deny("init_module", f_init_module, EPERM);
    deny("finit_module", f_finit_module, EPERM);
    deny("delete_module", f_delete_module, EPERM);
    deny("bpf", f_bpf, EPERM);
    deny("perf_event_open", f_perf_event_open, EPERM);
    deny("keyctl", f_keyctl, EPERM);
    deny("add_key", f_add_key, EPERM);
    deny("request_key", f_request_key, EPERM);
    deny("userfaultfd", f_userfaultfd, EPERM);
    deny("open_by_handle_at", f_open_by_handle_at, EPERM);
    deny("io_uring_setup", f_io_uring_setup, EPERM);
    deny("fanotify_init", f_fanotify_init, EPERM);
    deny("syslog", f_syslog, EPERM);
    deny("acct", f_acct, EPERM);
    deny("quotactl", f_quotactl, EPERM);
    deny("swapon", f_swapon, EPERM);
    deny("swapoff", f_swapoff, EPERM);
    deny("reboot", f_reboot, EPERM);
    deny("settimeofday", f_settimeofday, EPERM);
    deny("clock_settime", f_clock_settime, EPERM);
#if defined(__i386__) && defined(SYS_clock_settime64)
    deny("clock_settime64", f_clock_settime64, EPERM);
#endif
    deny("adjtimex", f_adjtimex, EPERM);
    deny("clock_adjtime", f_clock_adjtime, EPERM);
#if defined(__i386__) && defined(SYS_clock_adjtime64)
    deny("clock_adjtime64", f_clock_adjtime64, EPERM);
#endif
    deny("iopl", f_iopl, EPERM);
    deny("ioperm", f_ioperm, EPERM);
    deny("open_tree", f_open_tree, EPERM);
    deny("move_mount", f_move_mount, EPERM);
    deny("fsopen", f_fsopen, EPERM);
    deny("fsconfig", f_fsconfig, EPERM);
    deny("fsmount", f_fsmount, EPERM);
    deny("fspick", f_fspick, EPERM);
    deny("mount_setattr", f_mount_setattr, EPERM);
    g_arg = 0;
    deny("mknod_char", f_mknod, EPERM);
    g_arg = 1;
    deny("mknod_block", f_mknod, EPERM);
#ifdef __x86_64__
    {
        /* Outside the contract's list, but the classic way round an x86_64-only filter: the
         * kernel without x32 support says ENOSYS, a filter EPERM (or kills). */
        long r = in_child(f_x32_mount);
        if (r == -EPERM || r == -ENOSYS || r == KILLED - SIGSYS)
            ok("x32_mount", "%s", what(r));
        else
            fail("x32_mount", "%s (want EPERM or ENOSYS)", what(r));
    }
#endif

    /* Still allowed. */
    allow("fork", f_fork);
    g_arg = 0;
    allow("clone", f_clone);
    allow("unshare_0", f_unshare);
    allow("ptrace_child", f_ptrace_child);
    allow("thread", f_thread);
    allow("posix_spawn", f_spawn);
    allow("mkfifo", f_mkfifo);

    /* The kernel's interfaces in /proc and /sys. */
    static const char *ro[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus",
                               "/proc/fs", "/sys"};
    for (size_t i = 0; i < sizeof ro / sizeof *ro; i++)
        check_ro(ro[i]);
    static const char *masked[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list",
                                   "/proc/sched_debug", "/proc/latency_stats"};
    for (size_t i = 0; i < sizeof masked / sizeof *masked; i++)
        check_masked(masked[i]);
    static const char *empty[] = {"/proc/acpi", "/proc/scsi", "/sys/firmware"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++)
        check_empty(empty[i]);

    if (net)
        check_resolv();
    else
        check_ping();

    /* Last: a remount that gets through changes the step's whole mount namespace. */
    {
        g_arg = MS_REMOUNT;
        long r = in_child(f_sys_remount);
        if (r < 0 && r > KILLED)
            ok("sys_remount_rw", "%s", ename((int)-r));
        else
            fail("sys_remount_rw", "mount -o remount,rw /sys %s", what(r));
        g_arg = MS_REMOUNT | MS_BIND;
        r = in_child(f_sys_remount);
        if (r < 0 && r > KILLED)
            ok("sys_remount_bind_rw", "%s", ename((int)-r));
        else
            fail("sys_remount_bind_rw", "mount -o remount,bind,rw /sys %s", what(r));
    }
    ok("done", "");
    return 0;
}

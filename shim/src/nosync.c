/*
 * libenvc-nosync: an LD_PRELOAD library that turns the sync family of calls into no-ops while
 * packages are installed into a throwaway build root (whose durability nobody needs: a crash
 * discards the layer anyway).
 *
 * Design rules, each one a failure of an older tool of this kind:
 *
 *  - The only libc function used is syscall(3), which every glibc exports with its oldest symbol
 *    version on each architecture (GLIBC_2.0 on i386, GLIBC_2.2.5 on x86_64, GLIBC_2.17 on
 *    aarch64, GLIBC_2.4 on armhf; see src/arch.rs). In particular there is no dlsym(RTLD_NEXT, "open"): dlsym got
 *    a new symbol version in glibc 2.34, so a library linked against a new glibc and preloaded
 *    into an old root failed with "version `GLIBC_2.34' not found". The open family is performed
 *    directly with the openat system call instead of forwarding to libc.
 *  - The no-ops still fail with EBADF on a descriptor that is not open, as the real calls do, so
 *    programs that probe descriptors with fsync keep working.
 *  - errno is set by syscall(3) itself, so not even __errno_location is needed.
 *
 * build.rs compiles this file with -D_FORTIFY_SOURCE=0 -fno-stack-protector so that no
 * __*_chk or __stack_chk_fail reference creeps in; a test checks the dynamic symbol table.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* The flags that ask for synchronous writes. O_SYNC contains the O_DSYNC bit on Linux; clear both. */
#define SYNC_FLAGS (O_SYNC | O_DSYNC)

#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif

/* What glibc's open64 family adds: O_LARGEFILE is 0100000 on i386, 0400000 on arm, and 0 on
 * x86_64 and aarch64, where the kernel implies it. */
#define LARGEFILE_FLAG O_LARGEFILE

/* Whether an open with these flags takes a mode argument (as glibc's __OPEN_NEEDS_MODE). */
static inline int needs_mode(int flags)
{
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

/* 0 if fd is an open descriptor, else -1 with errno set (EBADF) by syscall(3). */
static inline int check_fd(int fd)
{
    return syscall(SYS_fcntl, fd, F_GETFD) < 0 ? -1 : 0;
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode)
{
    flags &= ~SYNC_FLAGS;
    return (int)syscall(SYS_openat, dirfd, path, flags, needs_mode(flags) ? mode : 0);
}

/* Reads the optional mode argument the way the variadic open functions receive it. */
#define MODE_ARG(flags, mode)                                                                      \
    do {                                                                                           \
        (mode) = 0;                                                                                \
        if (needs_mode(flags)) {                                                                   \
            va_list ap;                                                                            \
            va_start(ap, flags);                                                                   \
            (mode) = (mode_t)va_arg(ap, unsigned int);                                             \
            va_end(ap);                                                                            \
        }                                                                                          \
    } while (0)

/* ---- the sync family: no-ops that still validate their descriptor ---- */

EXPORT int fsync(int fd)
{
    return check_fd(fd);
}

EXPORT int fdatasync(int fd)
{
    return check_fd(fd);
}

EXPORT int syncfs(int fd)
{
    return check_fd(fd);
}

EXPORT int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags)
{
    (void)offset;
    (void)nbytes;
    (void)flags;
    return check_fd(fd);
}

EXPORT void sync(void)
{
}

EXPORT int msync(void *addr, size_t length, int flags)
{
    (void)addr;
    (void)length;
    (void)flags;
    return 0;
}

/* ---- the open family: drop O_SYNC / O_DSYNC ---- */

EXPORT int open(const char *path, int flags, ...)
{
    mode_t mode;
    MODE_ARG(flags, mode);
    return do_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
    mode_t mode;
    MODE_ARG(flags, mode);
    return do_openat(AT_FDCWD, path, flags | LARGEFILE_FLAG, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode;
    MODE_ARG(flags, mode);
    return do_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    mode_t mode;
    MODE_ARG(flags, mode);
    return do_openat(dirfd, path, flags | LARGEFILE_FLAG, mode);
}

/*
 * The _FORTIFY_SOURCE entry points: a fortified open() without a mode argument whose flags are
 * not a compile-time constant calls these. glibc aborts when the flags then need a mode; this
 * library must never be the reason a build fails, so such a call gets mode 0 (the safest mode
 * for a file nobody said how to create) instead.
 */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

EXPORT int __open_2(const char *path, int flags)
{
    return do_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags)
{
    return do_openat(AT_FDCWD, path, flags | LARGEFILE_FLAG, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    return do_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    return do_openat(dirfd, path, flags | LARGEFILE_FLAG, 0);
}

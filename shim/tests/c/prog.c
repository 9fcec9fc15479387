/*
 * Test program for libenvc-nosync. Prints `key=value` lines the tests parse.
 *
 *   prog sync DIR N   fsync a file N times, then fdatasync, sync_file_range, syncfs, msync and
 *                     sync once each, and open the file with O_SYNC (flags read back).
 *   prog ebadf DIR    the sync calls on bad, closed and valid descriptors: `name=ret/errno`.
 *   prog open DIR     the open family: flags as read back with F_GETFL, creation modes, errors.
 *
 * Exits 1 if a call that must succeed fails. Compiled by the tests as 64- and 32-bit, with and
 * without _FORTIFY_SOURCE (with it, opens with non-constant flags and no mode call __open_2 etc.).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int failed;

static const char *join(const char *dir, const char *name)
{
    static char buf[8][4096];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static void must(const char *what, int ok)
{
    if (!ok) {
        fprintf(stderr, "prog: %s failed: %s\n", what, strerror(errno));
        failed = 1;
    }
}

/* Prints what an open returned: its flags split into the sync bits and the rest, or its errno. */
static void report_open(const char *what, int fd)
{
    if (fd < 0) {
        printf("%s=errno:%d\n", what, errno);
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    printf("%s.sync=%d\n", what, (fl & O_SYNC) == O_SYNC);
    printf("%s.dsync=%d\n", what, (fl & O_DSYNC) != 0);
    printf("%s.flags=%#o\n", what, fl & ~(O_SYNC | O_DSYNC));
    struct stat st;
    if (fstat(fd, &st) == 0)
        printf("%s.mode=%o\n", what, (unsigned)(st.st_mode & 07777));
    close(fd);
}

/* A call's result and errno. */
static void report_call(const char *what, int ret)
{
    printf("%s=%d/%d\n", what, ret, ret < 0 ? errno : 0);
}

static int cmd_sync(const char *dir, long n)
{
    const char *file = join(dir, "data");
    char block[4096];
    memset(block, 'a', sizeof block);
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    must("open", fd >= 0);
    must("write", write(fd, block, sizeof block) == (ssize_t)sizeof block);
    long ok = 0;
    for (long i = 0; i < n; i++) {
        int r = fsync(fd);
        must("fsync", r == 0);
        ok += r == 0;
    }
    printf("fsync_ok=%ld\n", ok);
    must("fdatasync", fdatasync(fd) == 0);
    must("sync_file_range", sync_file_range(fd, 0, sizeof block, SYNC_FILE_RANGE_WRITE) == 0);
    must("syncfs", syncfs(fd) == 0);
    char *map = mmap(NULL, sizeof block, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    must("mmap", map != MAP_FAILED);
    if (map != MAP_FAILED) {
        map[0] = 'b';
        must("msync", msync(map, sizeof block, MS_SYNC) == 0);
        munmap(map, sizeof block);
    }
    sync();
    close(fd);
    report_open("open_osync", open(file, O_WRONLY | O_SYNC));
    return failed;
}

static int cmd_ebadf(const char *dir)
{
    const char *file = join(dir, "data");
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    must("open", fd >= 0);
    must("write", write(fd, "x", 1) == 1);
    report_call("fsync_valid", fsync(fd));
    report_call("fdatasync_valid", fdatasync(fd));
    report_call("syncfs_valid", syncfs(fd));
    report_call("sync_file_range_valid", sync_file_range(fd, 0, 1, SYNC_FILE_RANGE_WRITE));
    close(fd);
    report_call("fsync_minus1", fsync(-1));
    report_call("fsync_12345", fsync(12345));
    report_call("fdatasync_minus1", fdatasync(-1));
    report_call("fdatasync_closed", fdatasync(fd));
    report_call("fsync_closed", fsync(fd));
    report_call("syncfs_closed", syncfs(fd));
    report_call("sync_file_range_closed", sync_file_range(fd, 0, 1, SYNC_FILE_RANGE_WRITE));
    /* errno is left alone on success. */
    errno = 0;
    fd = open(file, O_RDONLY);
    must("open", fd >= 0);
    errno = 4242;
    int r = fsync(fd);
    printf("errno_kept=%d/%d\n", r, errno);
    close(fd);
    return failed;
}

/* Non-constant flags: with _FORTIFY_SOURCE, an open without mode then calls __open_2 & co. */
static volatile int wr_osync = O_WRONLY | O_SYNC;
static volatile int wr_dsync = O_WRONLY | O_DSYNC;
static volatile int rd_only = O_RDONLY;

static int cmd_open(const char *dir)
{
    const char *file = join(dir, "data");
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    must("open", fd >= 0);
    close(fd);
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
    must("open dir", dirfd >= 0);

    report_open("open", open(file, O_WRONLY | O_SYNC));
    report_open("open_dsync", open(file, O_WRONLY | O_DSYNC));
    report_open("open64", open64(file, O_WRONLY | O_SYNC));
    report_open("openat", openat(dirfd, "data", O_WRONLY | O_SYNC));
    report_open("openat_cwd", openat(AT_FDCWD, file, O_WRONLY | O_DSYNC));
    report_open("openat64", openat64(dirfd, "data", O_WRONLY | O_SYNC));
    report_open("open_var", open(file, wr_osync));
    report_open("open_var_dsync", open(file, wr_dsync));
    report_open("open64_var", open64(file, wr_osync));
    report_open("openat_var", openat(dirfd, "data", wr_osync));
    report_open("openat64_var", openat64(dirfd, "data", wr_dsync));
    report_open("open_append", open(file, O_WRONLY | O_APPEND | O_SYNC | O_CLOEXEC | O_NONBLOCK));

    umask(022);
    report_open("creat_0640", open(join(dir, "c1"), O_WRONLY | O_CREAT | O_EXCL | O_SYNC, 0640));
    report_open("creat64_0604", open64(join(dir, "c2"), O_RDWR | O_CREAT | O_EXCL, 0604));
    report_open("creatat_0600", openat(dirfd, "c3", O_WRONLY | O_CREAT | O_DSYNC, 0600));
    report_open("creatat64_0755", openat64(dirfd, "c4", O_WRONLY | O_CREAT, 0755));
    report_open("creat_umask", open(join(dir, "c5"), O_WRONLY | O_CREAT, 0666));
    report_open("tmpfile_0600", open(dir, O_TMPFILE | O_RDWR | O_SYNC, 0600));
    report_open("tmpfileat_0640", openat(dirfd, ".", O_TMPFILE | O_WRONLY, 0640));

    report_open("enoent", open(join(dir, "missing"), rd_only));
    report_open("enoent_at", openat(dirfd, "missing", O_RDONLY));
    report_open("eexist", open(file, O_WRONLY | O_CREAT | O_EXCL, 0644));
    report_open("enotdir", open(file, O_RDONLY | O_DIRECTORY));
    report_open("ebadf_at", openat(12345, "data", O_RDONLY));
    report_open("abs_ignores_dirfd", openat(12345, file, O_RDONLY));
    close(dirfd);
    return failed;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "sync") == 0)
        return cmd_sync(argv[2], atol(argv[3]));
    if (argc == 3 && strcmp(argv[1], "ebadf") == 0)
        return cmd_ebadf(argv[2]);
    if (argc == 3 && strcmp(argv[1], "open") == 0)
        return cmd_open(argv[2]);
    fprintf(stderr, "usage: prog sync DIR N | ebadf DIR | open DIR\n");
    return 2;
}

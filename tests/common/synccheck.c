/* Reports how sync calls and O_SYNC opens behave: used by the sync-suppression tests. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/tmp/synccheck";
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 2; }
    int ok = fsync(fd);
    close(fd);
    errno = 0;
    int closed = fsync(fd);
    int closed_errno = errno;
    int sfd = open(path, O_WRONLY | O_SYNC);
    if (sfd < 0) { perror("open O_SYNC"); return 2; }
    int osync = (fcntl(sfd, F_GETFL) & O_SYNC) == O_SYNC;
    close(sfd);
    printf("fsync_open=%d fsync_closed=%d/%d osync=%d\n", ok, closed, closed_errno, osync);
    return 0;
}

/* A hostile container root's probe: tries one system call, harmlessly, and prints
 * "<name> <errno name or OK>".  Every call is made so that it changes nothing even
 * where nothing stops it: invalid flags, a null or missing argument, a read. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long try_call(const char *name) {
    if (!strcmp(name, "open_by_handle_at")) {
        /* A handle of the container's own root: harmless if it opened. */
        struct { unsigned int bytes; int type; unsigned char data[128]; } h = {128, 0, {0}};
        int mount_id;
        if (syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &h, &mount_id, 0) < 0)
            return -1;
        long fd = syscall(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY);
        if (fd >= 0) close(fd);
        return fd;
    }
    if (!strcmp(name, "kexec_load")) /* invalid flags: EINVAL if allowed */
        return syscall(SYS_kexec_load, 0, 0, NULL, 0xdead0000UL);
    if (!strcmp(name, "init_module")) /* an empty image: EINVAL/ENOEXEC if allowed */
        return syscall(SYS_init_module, "", 0, "");
    if (!strcmp(name, "finit_module")) /* no such descriptor: EBADF if allowed */
        return syscall(SYS_finit_module, -1, "", 0);
    if (!strcmp(name, "delete_module")) /* no such module: ENOENT if allowed */
        return syscall(SYS_delete_module, "ctfs_no_such_module", O_NONBLOCK);
    if (!strcmp(name, "keyctl")) /* read this thread's keyring id, creating nothing */
        return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -1 /* THREAD */, 0);
    if (!strcmp(name, "bpf")) /* an unknown command: EINVAL if allowed */
        return syscall(SYS_bpf, 0x7fff, NULL, 0);
    if (!strcmp(name, "perf_event_open")) /* no attributes: EFAULT if allowed */
        return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(name, "acct")) /* a file that does not exist: ENOENT if allowed */
        return syscall(SYS_acct, "/ctfs-no-such-file");
    if (!strcmp(name, "userfaultfd")) {
        long fd = syscall(SYS_userfaultfd, 0);
        if (fd >= 0) close(fd);
        return fd;
    }
    if (!strcmp(name, "swapoff")) /* a file that does not exist: ENOENT if allowed */
        return syscall(SYS_swapoff, "/ctfs-no-such-file");
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long result = try_call(argv[i]);
        if (result == -2) {
            fprintf(stderr, "probe: unknown call %s\n", argv[i]);
            return 2;
        }
        printf("%s %s\n", argv[i], result >= 0 ? "OK" : strerrorname_np(errno));
    }
    return 0;
}

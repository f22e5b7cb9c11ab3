/* A static probe the containment tests put into their busybox rootfs: each
 * subcommand tries one thing a hostile build step would, and prints what
 * the kernel answered ("ok" or the errno name), so that a test asserts on
 * the system call itself, not on a shell tool's side effects. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <unistd.h>

static int report(long r) {
    if (r < 0) {
        printf("%s\n", strerrorname_np(errno));
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: probe x32|ptrace PID|vmread PID|mknod PATH MAJ MIN|rawsock|readdev PATH\n");
        return 2;
    }
    const char *what = argv[1];
    if (!strcmp(what, "x32")) {
        /* getpid through the x32 ABI (bit 30 of the number). */
        return report(syscall(0x40000000 | SYS_getpid));
    }
    if (!strcmp(what, "ptrace") && argc > 2) {
        return report(ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0));
    }
    if (!strcmp(what, "vmread") && argc > 2) {
        char buf[16];
        struct iovec local = {buf, sizeof buf};
        /* The probe's own text is mapped at the same place in a sibling
         * running the same static binary. */
        struct iovec remote = {(void *)main, sizeof buf};
        return report(process_vm_readv(atoi(argv[2]), &local, 1, &remote, 1, 0));
    }
    if (!strcmp(what, "mknod") && argc > 4) {
        return report(mknod(argv[2], S_IFBLK | 0600, makedev(atoi(argv[3]), atoi(argv[4]))));
    }
    if (!strcmp(what, "readdev") && argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0)
            return report(fd);
        char buf[513] = {0};
        long n = read(fd, buf, sizeof buf - 1);
        if (n < 0)
            return report(n);
        /* What was read, up to the first NUL: tests look for a marker. */
        printf("ok:%s\n", buf);
        return 0;
    }
    if (!strcmp(what, "rawsock")) {
        int a = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        if (a >= 0) {
            printf("ok\n");
            return 0;
        }
        return report(socket(AF_INET, SOCK_RAW, 1));
    }
    fprintf(stderr, "probe: unknown %s\n", what);
    return 2;
}

// udpsink: print the payload of every UDP datagram received on PORT, one per line.
//
// usage: udpsink [-6] PORT SECONDS
//   Binds UDP PORT on the wildcard address (0.0.0.0, or :: with -6), prints each datagram's
//   payload on its own line (stdout flushed after each line) and exits 0 after SECONDS
//   seconds (0: exit at once after binding). As a long-running listener: `udpsink PORT 3600`.
//   Exit 1 on socket errors, 2 on usage errors.
// Built statically by scripts/test-image.sh into the test image as /bin/udpsink.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void usage(void) {
    fprintf(stderr, "usage: udpsink [-6] PORT SECONDS\n");
    exit(2);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long parse(const char *s, long lo, long hi, const char *what) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "udpsink: bad %s '%s'\n", what, s);
        usage();
    }
    return v;
}

int main(int argc, char **argv) {
    int v6 = 0, opt;
    while ((opt = getopt(argc, argv, "6")) != -1) {
        if (opt == '6')
            v6 = 1;
        else
            usage();
    }
    if (argc - optind != 2)
        usage();
    long port = parse(argv[optind], 1, 65535, "PORT");
    long secs = parse(argv[optind + 1], 0, 100L * 365 * 24 * 3600, "SECONDS");

    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (v6) {
        struct sockaddr_in6 a;
        memset(&a, 0, sizeof a);
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_any;
        a.sin6_port = htons((unsigned short)port);
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        a.sin_port = htons((unsigned short)port);
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (rc) {
        perror("bind");
        return 1;
    }

    long deadline = now_ms() + secs * 1000L;
    static char buf[65536];
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        if (r == 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            perror("recv");
            return 1;
        }
        fwrite(buf, 1, (size_t)n, stdout);
        putchar('\n');
        fflush(stdout);
    }
    close(fd);
    return 0;
}

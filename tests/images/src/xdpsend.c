/* xdpsend.c - send one IPv4/UDP broadcast-MAC frame via an AF_XDP socket
 * (copy mode, no XDP program attached).
 * Usage: xdpsend IFACE SRC_IP DST_IP PORT PAYLOAD
 * Build: gcc -static -O2 -Wall -o xdpsend xdpsend.c
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <unistd.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <net/if.h>
#include <arpa/inet.h>
#include <linux/if_xdp.h>
#include <linux/if_link.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define NFRAMES 16
#define FSIZE 2048
#define RING 8

static void die(const char *what) {
    int e = errno;
    fprintf(stderr, "FAIL %s: errno=%d (%s)\n", what, e, strerror(e));
    exit(1);
}

static uint16_t csum(const void *p, size_t n) {
    const uint8_t *b = p; uint32_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2) s += (b[i] << 8) | b[i + 1];
    if (n & 1) s += b[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s IFACE SRC_IP DST_IP PORT PAYLOAD\n", argv[0]);
        return 2;
    }
    const char *ifn = argv[1];
    struct in_addr src, dst;
    if (inet_pton(AF_INET, argv[2], &src) != 1 || inet_pton(AF_INET, argv[3], &dst) != 1) {
        fprintf(stderr, "bad IP\n"); return 2;
    }
    int port = atoi(argv[4]);
    const char *payload = argv[5];
    size_t plen = strlen(payload);
    if (plen > 1400) { fprintf(stderr, "payload too long\n"); return 2; }

    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0)
        printf("RLIMIT_MEMLOCK cur=%lld max=%lld\n", (long long)rl.rlim_cur, (long long)rl.rlim_max);

    unsigned ifindex = if_nametoindex(ifn);
    if (!ifindex) die("if_nametoindex");
    printf("ifindex(%s)=%u\n", ifn, ifindex);

    int fd = socket(AF_XDP, SOCK_RAW, 0);
    if (fd < 0) die("socket(AF_XDP)");
    printf("OK socket(AF_XDP) fd=%d\n", fd);

    /* source MAC via SIOCGIFHWADDR on a throwaway UDP socket */
    unsigned char smac[6] = {0};
    {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, ifn, IFNAMSIZ - 1);
        if (s < 0 || ioctl(s, SIOCGIFHWADDR, &ifr) < 0) die("SIOCGIFHWADDR");
        memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
        close(s);
        printf("src mac %02x:%02x:%02x:%02x:%02x:%02x\n",
               smac[0], smac[1], smac[2], smac[3], smac[4], smac[5]);
    }

    size_t umem_len = NFRAMES * FSIZE;
    void *umem = mmap(NULL, umem_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (umem == MAP_FAILED) die("mmap umem");

    struct xdp_umem_reg mr; memset(&mr, 0, sizeof mr);
    mr.addr = (uint64_t)(uintptr_t)umem;
    mr.len = umem_len;
    mr.chunk_size = FSIZE;
    mr.headroom = 0;
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &mr, sizeof mr) < 0) die("setsockopt XDP_UMEM_REG");
    printf("OK XDP_UMEM_REG\n");

    int rs = RING;
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_FILL_RING, &rs, sizeof rs) < 0) die("setsockopt XDP_UMEM_FILL_RING");
    if (setsockopt(fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &rs, sizeof rs) < 0) die("setsockopt XDP_UMEM_COMPLETION_RING");
    if (setsockopt(fd, SOL_XDP, XDP_TX_RING, &rs, sizeof rs) < 0) die("setsockopt XDP_TX_RING");
    if (getenv("XDP_WITH_RX")) {
        if (setsockopt(fd, SOL_XDP, XDP_RX_RING, &rs, sizeof rs) < 0) die("setsockopt XDP_RX_RING");
        printf("OK XDP_RX_RING\n");
    }
    printf("OK ring sizes\n");

    struct xdp_mmap_offsets off; socklen_t ol = sizeof off;
    if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0) die("getsockopt XDP_MMAP_OFFSETS");

    void *txm = mmap(NULL, off.tx.desc + RING * sizeof(struct xdp_desc),
                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, XDP_PGOFF_TX_RING);
    if (txm == MAP_FAILED) die("mmap TX ring");
    void *cqm = mmap(NULL, off.cr.desc + RING * sizeof(uint64_t),
                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, XDP_UMEM_PGOFF_COMPLETION_RING);
    if (cqm == MAP_FAILED) die("mmap COMPLETION ring");
    void *fqm = mmap(NULL, off.fr.desc + RING * sizeof(uint64_t),
                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, XDP_UMEM_PGOFF_FILL_RING);
    if (fqm == MAP_FAILED) die("mmap FILL ring");
    printf("OK mmap rings\n");

    struct sockaddr_xdp sx; memset(&sx, 0, sizeof sx);
    sx.sxdp_family = AF_XDP;
    sx.sxdp_ifindex = ifindex;
    sx.sxdp_queue_id = 0;
    sx.sxdp_flags = XDP_COPY;
    if (bind(fd, (struct sockaddr *)&sx, sizeof sx) < 0) die("bind(AF_XDP, XDP_COPY)");
    printf("OK bind ifindex=%u queue=0 XDP_COPY\n", ifindex);

    /* build frame in UMEM frame 0 */
    uint8_t *f = umem;
    size_t ulen = 8 + plen, iplen = 20 + ulen, flen = 14 + iplen;
    memset(f, 0xff, 6);
    memcpy(f + 6, smac, 6);
    f[12] = 0x08; f[13] = 0x00;
    uint8_t *ip = f + 14;
    memset(ip, 0, 20);
    ip[0] = 0x45; ip[1] = 0;
    ip[2] = iplen >> 8; ip[3] = iplen & 0xff;
    ip[4] = 0x12; ip[5] = 0x34;          /* id */
    ip[6] = 0x40; ip[7] = 0;             /* DF */
    ip[8] = 64; ip[9] = 17;              /* ttl, UDP */
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    uint16_t c = csum(ip, 20);
    ip[10] = c >> 8; ip[11] = c & 0xff;
    uint8_t *u = ip + 20;
    u[0] = 0xc3; u[1] = 0x50;            /* sport 50000 */
    u[2] = port >> 8; u[3] = port & 0xff;
    u[4] = ulen >> 8; u[5] = ulen & 0xff;
    u[6] = 0; u[7] = 0;                  /* no UDP checksum */
    memcpy(u + 8, payload, plen);
    if (flen < 60) { memset(f + flen, 0, 60 - flen); flen = 60; }

    /* TX ring producer */
    volatile uint32_t *tx_prod = (uint32_t *)((char *)txm + off.tx.producer);
    volatile uint32_t *tx_cons = (uint32_t *)((char *)txm + off.tx.consumer);
    struct xdp_desc *txd = (struct xdp_desc *)((char *)txm + off.tx.desc);
    uint32_t p = *tx_prod;
    txd[p & (RING - 1)].addr = 0;
    txd[p & (RING - 1)].len = flen;
    txd[p & (RING - 1)].options = 0;
    __atomic_store_n(tx_prod, p + 1, __ATOMIC_RELEASE);
    printf("OK queued TX desc len=%zu (prod %u -> %u)\n", flen, p, p + 1);

    if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) die("sendto kick");
    printf("OK sendto kick\n");

    /* check completion ring */
    volatile uint32_t *cq_prod = (uint32_t *)((char *)cqm + off.cr.producer);
    volatile uint32_t *cq_cons = (uint32_t *)((char *)cqm + off.cr.consumer);
    uint64_t *cqd = (uint64_t *)((char *)cqm + off.cr.desc);
    for (int i = 0; i < 100; i++) {
        if (__atomic_load_n(cq_prod, __ATOMIC_ACQUIRE) != *cq_cons) break;
        usleep(10000);
    }
    uint32_t cp = __atomic_load_n(cq_prod, __ATOMIC_ACQUIRE), cc = *cq_cons;
    printf("tx consumer=%u, completion prod=%u cons=%u", *tx_cons, cp, cc);
    if (cp != cc) printf(" (completed addr=%llu)", (unsigned long long)cqd[cc & (RING - 1)]);
    printf("\n");

    struct xdp_statistics st; socklen_t sl = sizeof st;
    if (getsockopt(fd, SOL_XDP, XDP_STATISTICS, &st, &sl) == 0)
        printf("stats: rx_dropped=%llu rx_invalid=%llu tx_invalid=%llu\n",
               (unsigned long long)st.rx_dropped, (unsigned long long)st.rx_invalid_descs,
               (unsigned long long)st.tx_invalid_descs);
    printf(cp != cc ? "RESULT: frame completed by kernel\n" : "RESULT: no completion\n");
    close(fd);
    return 0;
}

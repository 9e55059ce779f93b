// rawsend: send UDP datagrams through an AF_PACKET socket, bypassing the IP stack.
//
// usage: rawsend [-6] [-d] [-b] [-n COUNT] IFACE DST_IP PORT PAYLOAD
//   -6        IPv6 (DST_IP is an IPv6 address); default IPv4
//   -d        SOCK_DGRAM packet socket (the kernel builds the link header);
//             default SOCK_RAW (this program writes the Ethernet header)
//   -b        setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
//   -n COUNT  send COUNT copies (default 1), 10 ms apart
//
// Source address: the first address of the family on IFACE (IPv6: the first one that is not
// link-local, else the first link-local one). Source port 40000. Destination MAC: broadcast
// (Linux accepts unicast IP in an L2 broadcast frame, so no neighbour lookup is needed);
// 00:00:00:00:00:00 on `lo`. Prints "sent N bytes" per datagram. Exit: 0 ok, 1 failure
// (e.g. "sendto: No buffer space available" when a netfilter egress hook drops the packet),
// 2 usage error.
// Built statically by scripts/test-image.sh into the test image as /bin/rawsend.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SRC_PORT 40000
#define MAX_PAYLOAD 1400

static void usage(void) {
    fprintf(stderr, "usage: rawsend [-6] [-d] [-b] [-n COUNT] IFACE DST_IP PORT PAYLOAD\n");
    exit(2);
}

// One's-complement sum of a byte string, in network byte order (endian independent).
static uint32_t sum_bytes(const void *data, size_t len, uint32_t sum) {
    const uint8_t *p = data;
    while (len > 1) {
        sum += (uint32_t)p[0] << 8 | p[1];
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

// Fold and complement; the result is in host order (store with htons).
static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

// Find the source address of family `fam` on `ifname`. Returns 0 on success.
static int source_addr(const char *ifname, int fam, void *out) {
    struct ifaddrs *ifs, *ifa;
    int found = 0;
    if (getifaddrs(&ifs)) {
        perror("getifaddrs");
        return -1;
    }
    for (ifa = ifs; ifa; ifa = ifa->ifa_next) {
        if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != fam || strcmp(ifa->ifa_name, ifname))
            continue;
        if (fam == AF_INET) {
            memcpy(out, &((struct sockaddr_in *)ifa->ifa_addr)->sin_addr, 4);
            found = 1;
            break;
        }
        const struct in6_addr *a = &((struct sockaddr_in6 *)ifa->ifa_addr)->sin6_addr;
        if (!IN6_IS_ADDR_LINKLOCAL(a)) {
            memcpy(out, a, 16);
            found = 1;
            break;
        }
        if (!found) {  // remember the first link-local one as the fallback
            memcpy(out, a, 16);
            found = 2;
        }
    }
    freeifaddrs(ifs);
    if (!found) {
        fprintf(stderr, "rawsend: no IPv%d address on %s\n", fam == AF_INET ? 4 : 6, ifname);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int v6 = 0, dgram = 0, bypass = 0, opt;
    long count = 1;
    char *end;

    while ((opt = getopt(argc, argv, "6dbn:")) != -1) {
        switch (opt) {
        case '6': v6 = 1; break;
        case 'd': dgram = 1; break;
        case 'b': bypass = 1; break;
        case 'n':
            errno = 0;
            count = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || count < 1 || count > 1000000) {
                fprintf(stderr, "rawsend: bad COUNT '%s'\n", optarg);
                usage();
            }
            break;
        default: usage();
        }
    }
    if (argc - optind != 4)
        usage();
    const char *ifname = argv[optind], *dst = argv[optind + 1], *msg = argv[optind + 3];
    errno = 0;
    long port = strtol(argv[optind + 2], &end, 10);
    if (errno || *end || end == argv[optind + 2] || port < 1 || port > 65535) {
        fprintf(stderr, "rawsend: bad PORT '%s'\n", argv[optind + 2]);
        usage();
    }
    if (strlen(ifname) >= IFNAMSIZ) {
        fprintf(stderr, "rawsend: interface name too long: %s\n", ifname);
        usage();
    }
    size_t mlen = strlen(msg);
    if (mlen > MAX_PAYLOAD) {
        fprintf(stderr, "rawsend: payload longer than %d bytes\n", MAX_PAYLOAD);
        usage();
    }
    unsigned char daddr[16], saddr[16];
    if (inet_pton(v6 ? AF_INET6 : AF_INET, dst, daddr) != 1) {
        fprintf(stderr, "rawsend: bad IPv%d address '%s'\n", v6 ? 6 : 4, dst);
        usage();
    }

    unsigned char dmac[ETH_ALEN];
    memset(dmac, strcmp(ifname, "lo") ? 0xff : 0x00, sizeof dmac);
    uint16_t proto = htons(v6 ? ETH_P_IPV6 : ETH_P_IP);

    int fd = socket(AF_PACKET, dgram ? SOCK_DGRAM : SOCK_RAW, proto);
    if (fd < 0) {
        perror("socket(AF_PACKET)");
        return 1;
    }
    if (bypass) {
        int one = 1;
        if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one)) {
            perror("setsockopt(PACKET_QDISC_BYPASS)");
            return 1;
        }
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, ifname, strlen(ifname));
    if (ioctl(fd, SIOCGIFINDEX, &ifr)) {
        fprintf(stderr, "rawsend: interface %s: %s\n", ifname, strerror(errno));
        return 1;
    }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr)) {
        perror("ioctl(SIOCGIFHWADDR)");
        return 1;
    }
    if (source_addr(ifname, v6 ? AF_INET6 : AF_INET, saddr))
        return 1;

    unsigned char buf[sizeof(struct ether_header) + sizeof(struct ip6_hdr) +
                      sizeof(struct udphdr) + MAX_PAYLOAD];
    memset(buf, 0, sizeof buf);
    size_t off = 0;
    if (!dgram) {
        struct ether_header *eh = (struct ether_header *)buf;
        memcpy(eh->ether_dhost, dmac, ETH_ALEN);
        memcpy(eh->ether_shost, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
        eh->ether_type = proto;
        off = sizeof *eh;
    }
    unsigned char *l3 = buf + off;
    size_t iphlen = v6 ? sizeof(struct ip6_hdr) : sizeof(struct iphdr);
    struct udphdr *udp = (struct udphdr *)(l3 + iphlen);
    size_t ulen = sizeof *udp + mlen;
    size_t l3len = iphlen + ulen;
    uint32_t sum;

    udp->source = htons(SRC_PORT);
    udp->dest = htons((uint16_t)port);
    udp->len = htons((uint16_t)ulen);
    udp->check = 0;
    memcpy(udp + 1, msg, mlen);

    if (!v6) {
        struct iphdr *ip = (struct iphdr *)l3;
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = 0;
        ip->tot_len = htons((uint16_t)l3len);
        ip->id = 0;
        ip->frag_off = htons(IP_DF);
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        memcpy(&ip->saddr, saddr, 4);
        memcpy(&ip->daddr, daddr, 4);
        ip->check = 0;
        ip->check = htons(fold(sum_bytes(ip, sizeof *ip, 0)));
        // pseudo header: src, dst, zero, protocol, UDP length
        sum = sum_bytes(saddr, 4, 0);
        sum = sum_bytes(daddr, 4, sum);
        sum += IPPROTO_UDP + (uint32_t)ulen;
    } else {
        struct ip6_hdr *ip6 = (struct ip6_hdr *)l3;
        ip6->ip6_flow = htonl(6u << 28);
        ip6->ip6_plen = htons((uint16_t)ulen);
        ip6->ip6_nxt = IPPROTO_UDP;
        ip6->ip6_hlim = 64;
        memcpy(&ip6->ip6_src, saddr, 16);
        memcpy(&ip6->ip6_dst, daddr, 16);
        // pseudo header: src, dst, 32-bit UDP length, 3 zero bytes, next header
        sum = sum_bytes(saddr, 16, 0);
        sum = sum_bytes(daddr, 16, sum);
        sum += (uint32_t)ulen + IPPROTO_UDP;
    }
    uint16_t ck = fold(sum_bytes(udp, ulen, sum));
    udp->check = htons(ck ? ck : 0xffff);  // 0 means "no checksum" (forbidden for IPv6)

    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ifindex;
    sll.sll_protocol = proto;
    sll.sll_halen = ETH_ALEN;
    memcpy(sll.sll_addr, dmac, ETH_ALEN);

    for (long i = 0; i < count; i++) {
        if (i) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        ssize_t n = sendto(fd, buf, off + l3len, 0, (struct sockaddr *)&sll, sizeof sll);
        if (n < 0) {
            perror("sendto");
            return 1;
        }
        printf("sent %zd bytes\n", n);
        fflush(stdout);
    }
    close(fd);
    return 0;
}

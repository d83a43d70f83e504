/*
 * qosmark live shaping client: QOSSetFlow(QOSSetOutgoingRate) through qosmark.h /
 * libqosmark.so, run by linux/tests/live_shape.rs inside the sender namespace against qosmarkd.
 *
 * usage: live_shape RECEIVER_V4 PORT BEHAVIOUR RATE_BPS SECONDS SIZE FACTOR
 *   BEHAVIOUR  0 QOSShapeOnly, 1 QOSShapeAndMark, 2 QOSUseNonConformantMarkings
 *   RATE_BPS   the flow's rate (bit/s at the IP level)
 *   SIZE       UDP payload bytes per datagram (>= 12)
 *   FACTOR     the sender sends at FACTOR x RATE_BPS for SECONDS
 *
 * One connected UDP/IPv4 socket, QOSTrafficTypeVoice (DSCP 56). Before the rate is set:
 * QOSSetOutgoingRate with 0 bit/s, 1 bit/s (below one packet per second) and an unknown
 * shaping behaviour must fail with 87 and QOSQueryOutgoingRate must fail with 232; after
 * it: QOSQueryOutgoingRate returns RATE_BPS, and the same invalid calls fail with 87 and
 * leave it unchanged. Then datagrams [u32 seq][u64 CLOCK_MONOTONIC send ns][filler] are
 * paced (absolute sleeps) at FACTOR x RATE_BPS for SECONDS.
 *
 * Lines on stdout: "ok ..." / "FAIL ..." per check, then "SENT <count> <first_ns> <last_ns>".
 * It then reads commands from stdin, one per line:
 *   remove  QOSRemoveSocketFromFlow (the flow goes: its held packets are released); prints
 *           "REMOVED <CLOCK_MONOTONIC ns before the call>"
 *   close   QOSCloseHandle, prints "<n> failures" and exits (0 when no check failed).
 */
#include "qosmark.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, what)                                                                  \
    do {                                                                                   \
        if (cond) {                                                                        \
            printf("ok   %s\n", what);                                                     \
        } else {                                                                           \
            printf("FAIL %s (last error %u)\n", what, (unsigned)QOSGetLastError());        \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_until(uint64_t ns) {
    struct timespec t = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
    }
}

static int set_rate(HANDLE h, QOS_FLOWID f, UINT64 bps, int behaviour) {
    QOS_FLOWRATE_OUTGOING rate;
    memset(&rate, 0, sizeof rate);
    rate.Bandwidth = bps;
    rate.ShapingBehavior = (QOS_SHAPING)behaviour;
    rate.Reason = QOSFlowRateNotApplicable;
    return QOSSetFlow(h, f, QOSSetOutgoingRate, sizeof rate, &rate, 0, NULL);
}

/* The flow's rate, or 0 when the query fails. */
static UINT64 query_rate(HANDLE h, QOS_FLOWID f) {
    UINT64 rate = 0;
    ULONG size = sizeof rate;
    if (!QOSQueryFlow(h, f, QOSQueryOutgoingRate, &size, &rate, 0, NULL) || size != sizeof rate) {
        return 0;
    }
    return rate;
}

static void invalid_rates(HANDLE h, QOS_FLOWID f, int behaviour, const char *when) {
    char what[160];
    snprintf(what, sizeof what, "%s: rate 0 bit/s fails with 87", when);
    CHECK(!set_rate(h, f, 0, behaviour) && QOSGetLastError() == 87, what);
    snprintf(what, sizeof what, "%s: rate 1 bit/s (below one packet per second) fails with 87",
             when);
    CHECK(!set_rate(h, f, 1, behaviour) && QOSGetLastError() == 87, what);
    snprintf(what, sizeof what, "%s: shaping behaviour 3 fails with 87", when);
    CHECK(!set_rate(h, f, 1000000, 3) && QOSGetLastError() == 87, what);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr,
                "usage: live_shape RECEIVER_V4 PORT BEHAVIOUR RATE_BPS SECONDS SIZE FACTOR\n");
        return 2;
    }
    int port = atoi(argv[2]);
    int behaviour = atoi(argv[3]);
    UINT64 bps = strtoull(argv[4], NULL, 10);
    double seconds = atof(argv[5]);
    size_t size = (size_t)atoi(argv[6]);
    double factor = atof(argv[7]);
    if (size < 12 || size > 1400 || bps == 0 || seconds <= 0 || factor <= 0) {
        fprintf(stderr, "live_shape: bad arguments\n");
        return 2;
    }
    struct sockaddr_in r4;
    memset(&r4, 0, sizeof r4);
    r4.sin_family = AF_INET;
    r4.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, argv[1], &r4.sin_addr);

    QOS_VERSION version = {1, 0};
    HANDLE h = NULL;
    CHECK(QOSCreateHandle(&version, &h), "QOSCreateHandle");
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    /* Held packets stay charged to the socket's send buffer (they are still in the kernel):
     * room for the whole test, so the sender keeps its pace instead of blocking in send. */
    int sndbuf = 64 << 20;
    CHECK(setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) == 0,
          "SO_SNDBUFFORCE 64 MiB");
    CHECK(connect(s, (struct sockaddr *)&r4, sizeof r4) == 0, "connect");
    QOS_FLOWID f = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s, NULL, QOSTrafficTypeVoice, 0, &f) && f != 0,
          "QOSAddSocketToFlow connected UDP/IPv4 Voice");

    invalid_rates(h, f, behaviour, "before any rate");
    UINT64 none = 0;
    ULONG none_size = sizeof none;
    CHECK(!QOSQueryFlow(h, f, QOSQueryOutgoingRate, &none_size, &none, 0, NULL) &&
              QOSGetLastError() == 232,
          "QOSQueryOutgoingRate without a rate fails with 232 (ERROR_NO_DATA)");
    CHECK(set_rate(h, f, bps, behaviour), "QOSSetFlow(QOSSetOutgoingRate)");
    CHECK(query_rate(h, f) == bps, "QOSQueryOutgoingRate returns the rate set");
    invalid_rates(h, f, behaviour, "with a rate set");
    CHECK(query_rate(h, f) == bps, "QOSQueryOutgoingRate still returns the rate set");
    QOS_PACKET_PRIORITY prio;
    ULONG psize = sizeof prio;
    CHECK(QOSQueryFlow(h, f, QOSQueryPacketPriority, &psize, &prio, 0, NULL) &&
              prio.ConformantDSCPValue == 56,
          "QOSQueryPacketPriority conformant DSCP 56");
    printf("NONCONFORMANT %u\n", (unsigned)prio.NonConformantDSCPValue);

    /* Bits per datagram at the IP level: payload + UDP (8) + IPv4 (20) headers. */
    double bits = (double)(size + 28) * 8.0;
    double pps = factor * (double)bps / bits;
    uint64_t interval = (uint64_t)(1e9 / pps);
    uint64_t count = (uint64_t)(seconds * pps);
    unsigned char msg[1400];
    memset(msg, 0xa7, sizeof msg);
    uint64_t start = now_ns() + 20000000ull;
    uint64_t first = 0, last = 0;
    for (uint64_t i = 0; i < count; i++) {
        sleep_until(start + i * interval);
        uint32_t seq = (uint32_t)i;
        uint64_t t = now_ns();
        memcpy(msg, &seq, 4);
        memcpy(msg + 4, &t, 8);
        if (send(s, msg, size, 0) != (ssize_t)size) {
            printf("FAIL send %u: %s\n", seq, strerror(errno));
            failures++;
        }
        if (i == 0) {
            first = t;
        }
        last = t;
    }
    printf("SENT %llu %llu %llu\n", (unsigned long long)count, (unsigned long long)first,
           (unsigned long long)last);
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "remove", 6) == 0) {
            uint64_t t = now_ns();
            CHECK(QOSRemoveSocketFromFlow(h, (SOCKET)s, f, 0), "QOSRemoveSocketFromFlow");
            printf("REMOVED %llu\n", (unsigned long long)t);
        } else if (strncmp(line, "close", 5) == 0) {
            break;
        }
        fflush(stdout);
    }
    CHECK(QOSCloseHandle(h), "QOSCloseHandle");
    close(s);
    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}

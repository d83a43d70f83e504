/*
 * qosmark live test client: a qWAVE-style program using only qosmark.h / libqosmark.so,
 * run by linux/tests/live_api.rs inside the sender network namespace against qosmarkd.
 *
 * usage: live_client RECEIVER_V4 RECEIVER_V6 PORT_BASE
 * Sends tagged datagrams ("tag:i") the test's capture judges:
 *   c-voice4    connected UDP/IPv4, QOSTrafficTypeVoice, TOS ECN 01  -> DSCP 56, ECN 01
 *   c-dscp6     unconnected UDP/IPv6 with DestAddr, non-adaptive, QOSSetOutgoingDSCPValue 46
 *   c-removed4  c-voice4's socket after QOSRemoveSocketFromFlow     -> untouched
 *   c-closed6   c-dscp6's socket after QOSCloseHandle                -> untouched
 *   c-multi0/1  one unconnected UDP/IPv4 socket, PORT_BASE+4 and +5 added under ONE flow id
 *               (DestAddr, non-adaptive, second call passes the first id)  -> DSCP 56 both
 *   c-multi2    the same socket to PORT_BASE+6, never registered          -> untouched
 *   c-mapped    dual-stack AF_INET6 socket (IPV6_V6ONLY=0) connected to ::ffff:RECEIVER_V4,
 *               PORT_BASE+7, QOSTrafficTypeExcellentEffort                -> IPv4, DSCP 40
 * and 10 x 100 bytes of TCP/IPv4 to PORT_BASE+2 with QOSTrafficTypeBackground -> DSCP 8,
 * and 10 x 100 bytes of TCP/IPv6 to PORT_BASE+3 with QOSTrafficTypeVoice -> Traffic Class 56<<2.
 * Exit 0 when every call answered as expected; each check prints one line.
 */
#include "qosmark.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void send_chunks(int s) {
    char chunk[100];
    memset(chunk, 0x5a, sizeof chunk);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < 10; i++) {
        if (send(s, chunk, sizeof chunk, 0) != (ssize_t)sizeof chunk) {
            printf("FAIL TCP send\n");
            failures++;
        }
        pause_ms(2);
    }
    shutdown(s, SHUT_WR);
}

static void send_tagged(int s, const struct sockaddr *to, socklen_t to_len, const char *tag) {
    char msg[64];
    for (int i = 0; i < 10; i++) {
        int n = snprintf(msg, sizeof msg, "%s:%d", tag, i);
        ssize_t r = to ? sendto(s, msg, (size_t)n, 0, to, to_len) : send(s, msg, (size_t)n, 0);
        if (r != n) {
            printf("FAIL send %s\n", tag);
            failures++;
        }
        pause_ms(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: live_client RECEIVER_V4 RECEIVER_V6 PORT_BASE\n");
        return 2;
    }
    int base = atoi(argv[3]);
    struct sockaddr_in r4;
    memset(&r4, 0, sizeof r4);
    r4.sin_family = AF_INET;
    r4.sin_port = htons((unsigned short)base);
    inet_pton(AF_INET, argv[1], &r4.sin_addr);
    struct sockaddr_in6 r6;
    memset(&r6, 0, sizeof r6);
    r6.sin6_family = AF_INET6;
    r6.sin6_port = htons((unsigned short)(base + 1));
    inet_pton(AF_INET6, argv[2], &r6.sin6_addr);
    struct sockaddr_in t4 = r4;
    t4.sin_port = htons((unsigned short)(base + 2));

    QOS_VERSION version = {1, 0};
    HANDLE h = NULL;
    CHECK(QOSCreateHandle(&version, &h), "QOSCreateHandle");

    /* Connected UDP/IPv4, Voice, application ECN ECT(1). */
    int s1 = socket(AF_INET, SOCK_DGRAM, 0);
    int tos = 0x01;
    setsockopt(s1, IPPROTO_IP, IP_TOS, &tos, sizeof tos);
    connect(s1, (struct sockaddr *)&r4, sizeof r4);
    QOS_FLOWID f1 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s1, NULL, QOSTrafficTypeVoice, 0, &f1) && f1 != 0,
          "QOSAddSocketToFlow connected UDP/IPv4 Voice");
    QOS_PACKET_PRIORITY prio;
    ULONG size = sizeof prio;
    CHECK(QOSQueryFlow(h, f1, QOSQueryPacketPriority, &size, &prio, 0, NULL) &&
              prio.ConformantDSCPValue == 56,
          "QOSQueryFlow packet priority = 56");
    send_tagged(s1, NULL, 0, "c-voice4");

    /* Unconnected UDP/IPv6 with DestAddr, custom DSCP 46 (root = administrator). */
    int s2 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 any6;
    memset(&any6, 0, sizeof any6);
    any6.sin6_family = AF_INET6;
    bind(s2, (struct sockaddr *)&any6, sizeof any6);
    QOS_FLOWID f2 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s2, (PSOCKADDR)&r6, QOSTrafficTypeAudioVideo,
                             QOS_NON_ADAPTIVE_FLOW, &f2) &&
              f2 != 0,
          "QOSAddSocketToFlow unconnected UDP/IPv6 with DestAddr");
    DWORD dscp = 46;
    CHECK(QOSSetFlow(h, f2, QOSSetOutgoingDSCPValue, sizeof dscp, &dscp, 0, NULL),
          "QOSSetFlow outgoing DSCP 46");
    send_tagged(s2, (struct sockaddr *)&r6, sizeof r6, "c-dscp6");

    /* TCP/IPv4, Background, registered after connect. */
    int s3 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(s3, (struct sockaddr *)&t4, sizeof t4) == 0, "TCP connect");
    QOS_FLOWID f3 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s3, NULL, QOSTrafficTypeBackground, 0, &f3),
          "QOSAddSocketToFlow TCP/IPv4 Background");
    send_chunks(s3);

    /* TCP/IPv6, Voice, registered after connect. */
    struct sockaddr_in6 t6 = r6;
    t6.sin6_port = htons((unsigned short)(base + 3));
    int s4 = socket(AF_INET6, SOCK_STREAM, 0);
    CHECK(connect(s4, (struct sockaddr *)&t6, sizeof t6) == 0, "TCP/IPv6 connect");
    QOS_FLOWID f4 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s4, NULL, QOSTrafficTypeVoice, 0, &f4) && f4 != 0,
          "QOSAddSocketToFlow TCP/IPv6 Voice");
    send_chunks(s4);

    /* One unconnected UDP/IPv4 socket, two destinations under one flow id, a third not. */
    int s5 = socket(AF_INET, SOCK_DGRAM, 0);
    /* An unconnected UDP socket must be bound before QOSAddSocketToFlow (87 otherwise). */
    struct sockaddr_in any4;
    memset(&any4, 0, sizeof any4);
    any4.sin_family = AF_INET;
    CHECK(bind(s5, (struct sockaddr *)&any4, sizeof any4) == 0, "bind unconnected UDP/IPv4");
    struct sockaddr_in m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = r4;
        m[i].sin_port = htons((unsigned short)(base + 4 + i));
    }
    QOS_FLOWID f5 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s5, (PSOCKADDR)&m[0], QOSTrafficTypeVoice,
                             QOS_NON_ADAPTIVE_FLOW, &f5) &&
              f5 != 0,
          "QOSAddSocketToFlow unconnected UDP/IPv4, first destination");
    QOS_FLOWID f5b = f5;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s5, (PSOCKADDR)&m[1], QOSTrafficTypeVoice,
                             QOS_NON_ADAPTIVE_FLOW, &f5b) &&
              f5b == f5,
          "QOSAddSocketToFlow second destination under the same flow id");
    send_tagged(s5, (struct sockaddr *)&m[0], sizeof m[0], "c-multi0");
    send_tagged(s5, (struct sockaddr *)&m[1], sizeof m[1], "c-multi1");
    send_tagged(s5, (struct sockaddr *)&m[2], sizeof m[2], "c-multi2");

    /* A dual-stack IPv6 socket connected to the IPv4 peer (v4-mapped address). */
    int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
    int zero = 0;
    setsockopt(s6, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 mapped;
    memset(&mapped, 0, sizeof mapped);
    mapped.sin6_family = AF_INET6;
    mapped.sin6_port = htons((unsigned short)(base + 7));
    mapped.sin6_addr.s6_addr[10] = 0xff;
    mapped.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&mapped.sin6_addr.s6_addr[12], &r4.sin_addr, 4);
    CHECK(connect(s6, (struct sockaddr *)&mapped, sizeof mapped) == 0,
          "dual-stack connect to ::ffff:RECEIVER_V4");
    QOS_FLOWID f6 = 0;
    CHECK(QOSAddSocketToFlow(h, (SOCKET)s6, NULL, QOSTrafficTypeExcellentEffort, 0, &f6) &&
              f6 != 0,
          "QOSAddSocketToFlow dual-stack IPv6 socket to an IPv4 peer");
    send_tagged(s6, NULL, 0, "c-mapped");

    /* Remove s1 from its flow: no more marking. */
    CHECK(QOSRemoveSocketFromFlow(h, (SOCKET)s1, f1, 0), "QOSRemoveSocketFromFlow");
    CHECK(!QOSRemoveSocketFromFlow(h, (SOCKET)s1, f1, 0) && QOSGetLastError() == 1168,
          "second QOSRemoveSocketFromFlow fails with 1168");
    send_tagged(s1, NULL, 0, "c-removed4");

    /* Close the handle; another handle waits until the daemon has dropped every flow. */
    CHECK(QOSCloseHandle(h), "QOSCloseHandle");
    HANDLE h2 = NULL;
    CHECK(QOSCreateHandle(&version, &h2), "QOSCreateHandle (second)");
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) {
        QOS_FLOWID ids[16];
        ULONG bytes = sizeof ids;
        if (QOSEnumerateFlows(h2, &bytes, ids) && bytes == 0) {
            gone = 1;
        } else {
            pause_ms(10);
        }
    }
    CHECK(gone, "flows of the closed handle are gone (QOSEnumerateFlows)");
    CHECK(QOSCloseHandle(h2), "QOSCloseHandle (second)");
    send_tagged(s2, (struct sockaddr *)&r6, sizeof r6, "c-closed6");

    close(s1);
    close(s2);
    close(s3);
    close(s4);
    close(s5);
    close(s6);
    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}

/*
 * The QOS2 C ABI on Windows with real Winsock sockets, run under Wine against a qosmark.dll
 * built with the cargo feature "test-hooks" (QmTestUseInProcessEngine: handles on an
 * in-process engine, since Wine has no qosmark driver). It exercises what only Windows runs:
 * the Winsock socket facts (SO_PROTOCOL_INFOW, getsockname's WSAEINVAL for an unbound socket,
 * getpeername's WSAENOTCONN), SetLastError, and the rule that a successful call leaves
 * GetLastError() as it was (qos-api.md section 5), although getpeername on an unconnected
 * socket sets WSAENOTCONN on the way.
 *
 * Expected values are the documented ones: Voice = DSCP 56 / 802.1p 7 (qos-api.md section 3),
 * codes from section 5. Exit status 0 when every check holds.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <string.h>

#define QOSMARK_TEST_HOOKS 1
#include "qosmark.h"
#include "../c/qm_check.h"

static struct sockaddr_in v4(const char *addr, unsigned short port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, addr, &a.sin_addr);
    return a;
}

static SOCKET bound_udp4(void)
{
    SOCKET s = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    struct sockaddr_in any = v4("127.0.0.1", 0);
    if (s == INVALID_SOCKET || bind(s, (struct sockaddr *)&any, sizeof any) != 0) {
        printf("cannot make a UDP socket: %d\n", WSAGetLastError());
        exit(2);
    }
    return s;
}

int main(void)
{
    WSADATA wsa;
    QOS_VERSION v = { 1, 0 };
    HANDLE h = NULL;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        printf("WSAStartup failed\n");
        return 2;
    }
    QmTestUseInProcessEngine(0);
    EXPECT_OK(QOSCreateHandle(&v, &h));

    /* An unconnected, bound UDP socket with a destination: getpeername fails (WSAENOTCONN)
     * inside, yet the last error is kept. */
    SOCKET s = bound_udp4();
    struct sockaddr_in dest = v4("127.0.0.1", 5004);
    QOS_FLOWID flow = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, s, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0, &flow));
    CHECK(flow != 0);
    QOS_PACKET_PRIORITY prio;
    ULONG size = sizeof prio;
    EXPECT_OK(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, NULL));
    CHECK(size == 16 && prio.ConformantDSCPValue == 56 && prio.ConformantL2Value == 7);
    size = 0;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, NULL, 0, NULL), 122);
    CHECK(size == 16);

    /* No DestAddr on an unconnected socket: 87. */
    SOCKET s2 = bound_udp4();
    QOS_FLOWID other = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, s2, NULL, QOSTrafficTypeVoice, 0, &other), 87);

    /* A connected UDP socket: DestAddr must equal the peer; NULL takes the peer. */
    SOCKET c = bound_udp4();
    struct sockaddr_in peer = v4("127.0.0.1", 5555), wrong = v4("127.0.0.1", 5556);
    CHECK(connect(c, (struct sockaddr *)&peer, sizeof peer) == 0);
    QOS_FLOWID fc = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, c, (PSOCKADDR)&wrong, QOSTrafficTypeVoice, 0, &fc), 87);
    EXPECT_OK(QOSAddSocketToFlow(h, c, (PSOCKADDR)&peer, QOSTrafficTypeVoice, 0, &fc));

    /* Windows cannot name the local address of an unbound socket (getsockname: WSAEINVAL):
     * TCP before connect is accepted, an unbound UDP socket is not (87). */
    SOCKET t = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    struct sockaddr_in server = v4("127.0.0.1", 443);
    QOS_FLOWID ft = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, t, (PSOCKADDR)&server, QOSTrafficTypeControl, 0, &ft));
    SOCKET u = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    QOS_FLOWID fu = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, u, (PSOCKADDR)&server, QOSTrafficTypeControl, 0, &fu), 87);

    /* Dual stack: an AF_INET6 socket (IPV6_V6ONLY off) with a v4-mapped destination. */
    SOCKET d6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDP);
    DWORD off = 0;
    struct sockaddr_in6 any6, mapped;
    memset(&any6, 0, sizeof any6);
    any6.sin6_family = AF_INET6;
    CHECK(setsockopt(d6, IPPROTO_IPV6, IPV6_V6ONLY, (const char *)&off, sizeof off) == 0);
    CHECK(bind(d6, (struct sockaddr *)&any6, sizeof any6) == 0);
    memset(&mapped, 0, sizeof mapped);
    mapped.sin6_family = AF_INET6;
    mapped.sin6_port = htons(7000);
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &mapped.sin6_addr);
    QOS_FLOWID f6 = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, d6, (PSOCKADDR)&mapped, QOSTrafficTypeVoice, 0, &f6));

    /* Not a socket: 87. */
    QOS_FLOWID fn = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)0x7ffc, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0,
                                   &fn),
                87);

    /* An in-process handle has no device: an OVERLAPPED is refused (50), nothing can be
     * pending for QOSCancel (1168). */
    OVERLAPPED ov;
    memset(&ov, 0, sizeof ov);
    QOS_TRAFFIC_TYPE tt = QOSTrafficTypeBackground;
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetTrafficType, sizeof tt, &tt, 0, &ov), 50);
    EXPECT_FAIL(QOSCancel(h, &ov), 1168);
    EXPECT_OK(QOSSetFlow(h, flow, QOSSetTrafficType, sizeof tt, &tt, 0, NULL));

    QOS_FLOWID ids[16];
    size = sizeof ids;
    EXPECT_OK(QOSEnumerateFlows(h, &size, ids));
    CHECK(size == 4 * sizeof(QOS_FLOWID));
    EXPECT_OK(QOSRemoveSocketFromFlow(h, 0, flow, 0));
    EXPECT_FAIL(QOSRemoveSocketFromFlow(h, 0, flow, 0), 1168);

    EXPECT_OK(QOSCloseHandle(h));
    EXPECT_FAIL(QOSCloseHandle(h), 6);
    closesocket(s);
    closesocket(s2);
    closesocket(c);
    closesocket(t);
    closesocket(u);
    closesocket(d6);
    WSACleanup();
    return QM_FINISH("inprocess");
}

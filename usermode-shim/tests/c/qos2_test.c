/*
 * qos2_test.c - the QOS2 C ABI of libqosmark.so, called the way a qWAVE program calls it.
 *
 * Daemon mode (QOS2_TEST_DAEMON set): run as root, the caller is an administrator (DSCP 46 is
 * allowed, every process's flows are enumerated); as another user, as in process.
 *
 * Built against include/qosmark.h and libqosmark.so by usermode-shim/capi/tests/c_program.rs.
 * Runs against an in-process engine (QmTestUseInProcessEngine, library built with the cargo
 * feature "test-hooks"); with QOS2_TEST_DAEMON set in the environment it skips the hook and
 * talks to whatever back end QOSCreateHandle finds (qosmarkd), for the Linux back end's tests.
 *
 * Expected codes are the documented Win32 values (qos-api.md section 5), written as numbers.
 * Exit status 0 = every check passed; the failures are printed.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QOSMARK_TEST_HOOKS 1
#include "qosmark.h"
#include "qm_check.h"

/* Weak, so the program also links against a library without the test hook (daemon mode). */
#pragma weak QmTestUseInProcessEngine

static int udp_socket(int family, const char *addr) {
    int s = socket(family, SOCK_DGRAM, 0);
    if (s < 0) {
        perror("socket");
        exit(2);
    }
    int rc;
    if (family == AF_INET) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        inet_pton(AF_INET, addr, &a.sin_addr);
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in6 a;
        memset(&a, 0, sizeof a);
        a.sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &a.sin6_addr);
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    }
    if (rc != 0) {
        perror("bind");
        exit(2);
    }
    return s;
}

static struct sockaddr_in v4(const char *addr, unsigned short port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, addr, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *addr, unsigned short port) {
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    inet_pton(AF_INET6, addr, &a.sin6_addr);
    return a;
}

int main(void) {
    int in_process = getenv("QOS2_TEST_DAEMON") == NULL;
    QOS_VERSION version = {1, 0};
    HANDLE h = NULL;

    /* QOSCreateHandle parameter checks (Wine's Windows-validated cases). */
    EXPECT_FAIL(QOSCreateHandle(NULL, NULL), 87);
    EXPECT_FAIL(QOSCreateHandle(&version, NULL), 87);
    QOS_VERSION bad[3] = {{0, 0}, {1, 5}, {2, 0}};
    for (int i = 0; i < 3; i++) {
        EXPECT_FAIL(QOSCreateHandle(&bad[i], &h), 87);
    }

    if (in_process) {
        if (QmTestUseInProcessEngine == NULL) {
            fprintf(stderr, "libqosmark has no test hook: build it with --features test-hooks "
                            "or set QOS2_TEST_DAEMON\n");
            return 2;
        }
        QmTestUseInProcessEngine(0);
    }
    EXPECT_OK(QOSCreateHandle(&version, &h));
    CHECK(h != NULL);

    /* Invalid handles. */
    EXPECT_FAIL(QOSCloseHandle(NULL), 6);
    EXPECT_FAIL(QOSCloseHandle((HANDLE)(uintptr_t)0xdeadbeef), 6);

    /* A new flow for an unconnected UDP socket. */
    int s = udp_socket(AF_INET, "127.0.0.1");
    struct sockaddr_in dest = v4("127.0.0.1", 5004);
    QOS_FLOWID flow = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)s, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0, &flow));
    CHECK(flow != 0);
    QOS_FLOWID other = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)s, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0, NULL),
                87);
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)s, (PSOCKADDR)&dest, (QOS_TRAFFIC_TYPE)6, 0, &other),
                87);
    /* Unconnected without DestAddr. */
    int s2 = udp_socket(AF_INET, "127.0.0.1");
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)s2, NULL, QOSTrafficTypeVoice, 0, &other), 87);

    /* Packet priority, with the size protocol: Voice = DSCP 56, 802.1p 7 (adaptive flow). */
    QOS_PACKET_PRIORITY prio;
    ULONG size = 0;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, NULL, 0, NULL), 122);
    CHECK(size == sizeof(QOS_PACKET_PRIORITY));
    size = 4;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, NULL), 122);
    CHECK(size == 16);
    size = sizeof prio;
    memset(&prio, 0xAA, sizeof prio);
    EXPECT_OK(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, NULL));
    CHECK(size == 16);
    CHECK(prio.ConformantDSCPValue == 56);
    CHECK(prio.NonConformantDSCPValue == 0);
    CHECK(prio.ConformantL2Value == 7);
    CHECK(prio.NonConformantL2Value == 0);
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, NULL, &prio, 0, NULL), 87);
    EXPECT_FAIL(
        QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, QOS_QUERYFLOW_FRESH, NULL), 87);
    QOS_FLOW_FUNDAMENTALS fund;
    size = sizeof fund;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryFlowFundamentals, &size, &fund, 0, NULL), 50);
    UINT64 rate = 0;
    size = sizeof rate;
    /* No rate set yet: ERROR_NO_DATA (232, qosmark choice). */
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryOutgoingRate, &size, &rate, 0, NULL), 232);
    size = sizeof prio;
    EXPECT_FAIL(QOSQueryFlow(h, flow + 1000, QOSQueryPacketPriority, &size, &prio, 0, NULL), 1168);

    /* QOSSetFlow. */
    QOS_TRAFFIC_TYPE tt = QOSTrafficTypeBackground;
    EXPECT_OK(QOSSetFlow(h, flow, QOSSetTrafficType, sizeof tt, &tt, 0, NULL));
    size = sizeof prio;
    EXPECT_OK(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, NULL));
    CHECK(prio.ConformantDSCPValue == 8 && prio.ConformantL2Value == 2);
    DWORD dscp = 46;
    /* A user may not set an arbitrary DSCP (5). Against a daemon, root is an administrator. */
    int privileged = !in_process && geteuid() == 0;
    if (privileged) {
        EXPECT_OK(QOSSetFlow(h, flow, QOSSetOutgoingDSCPValue, sizeof dscp, &dscp, 0, NULL));
    } else {
        EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingDSCPValue, sizeof dscp, &dscp, 0, NULL), 5);
    }
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingDSCPValue, 2, &dscp, 0, NULL), 87);
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingDSCPValue, sizeof dscp, NULL, 0, NULL), 87);
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetTrafficType, sizeof tt, &tt, 1, NULL), 87);
    QOS_FLOWRATE_OUTGOING out = {1000000, QOSShapeAndMark, QOSFlowRateNotApplicable};
    EXPECT_OK(QOSSetFlow(h, flow, QOSSetOutgoingRate, sizeof out, &out, 0, NULL));
    rate = 0;
    size = sizeof rate;
    EXPECT_OK(QOSQueryFlow(h, flow, QOSQueryOutgoingRate, &size, &rate, 0, NULL));
    CHECK(size == 8 && rate == 1000000);
    /* Below one 1500-byte packet per second (12 000 bit/s), or 0: 87, rate unchanged. */
    QOS_FLOWRATE_OUTGOING slow = {11999, QOSShapeOnly, QOSFlowRateNotApplicable};
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingRate, sizeof slow, &slow, 0, NULL), 87);
    slow.Bandwidth = 0;
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingRate, sizeof slow, &slow, 0, NULL), 87);
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetOutgoingRate, 8, &out, 0, NULL), 87);
    rate = 0;
    size = sizeof rate;
    EXPECT_OK(QOSQueryFlow(h, flow, QOSQueryOutgoingRate, &size, &rate, 0, NULL));
    CHECK(rate == 1000000);
    EXPECT_FAIL(QOSSetFlow(h, 0, QOSSetTrafficType, sizeof tt, &tt, 0, NULL), 1168);

    /* OVERLAPPED is not supported off Windows; nothing can be pending for QOSCancel. */
    char fake_overlapped[64] = {0};
    LPOVERLAPPED ov = (LPOVERLAPPED)(void *)fake_overlapped;
    EXPECT_FAIL(QOSSetFlow(h, flow, QOSSetTrafficType, sizeof tt, &tt, 0, ov), 50);
    size = sizeof prio;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, ov), 50);
    EXPECT_FAIL(QOSNotifyFlow(h, flow, QOSNotifyCongested, NULL, NULL, 0, ov), 50);
    EXPECT_FAIL(QOSCancel(h, ov), 1168);
    EXPECT_FAIL(QOSCancel(h, NULL), 87);

    /* QOSNotifyFlow: buffers checked first (87 / 122), then 50 (no notifications). */
    EXPECT_FAIL(QOSNotifyFlow(h, flow, QOSNotifyCongested, NULL, NULL, 0, NULL), 50);
    UINT64 threshold = 1000000;
    size = 4;
    EXPECT_FAIL(QOSNotifyFlow(h, flow, QOSNotifyAvailable, &size, &threshold, 0, NULL), 122);
    CHECK(size == 8);
    EXPECT_FAIL(QOSNotifyFlow(h, flow, QOSNotifyAvailable, &size, &threshold, 0, NULL), 50);
    EXPECT_FAIL(QOSNotifyFlow(h, flow, QOSNotifyUncongested, &size, &threshold, 0, NULL), 87);
    EXPECT_FAIL(QOSNotifyFlow(h, flow + 1000, QOSNotifyCongested, NULL, NULL, 0, NULL), 1168);

    /* A non-adaptive flow with several sockets and, for one socket, several destinations. */
    int a = udp_socket(AF_INET, "127.0.0.1");
    int b = udp_socket(AF_INET, "127.0.0.1");
    QOS_FLOWID shared = 0;
    struct sockaddr_in d1 = v4("127.0.0.1", 6000), d2 = v4("127.0.0.1", 6001);
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)a, (PSOCKADDR)&d1, QOSTrafficTypeAudioVideo,
                                 QOS_NON_ADAPTIVE_FLOW, &shared));
    QOS_FLOWID again = shared;
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)a, (PSOCKADDR)&d2, QOSTrafficTypeAudioVideo, 0, &again));
    CHECK(again == shared);
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)b, (PSOCKADDR)&d1, QOSTrafficTypeAudioVideo, 0, &again));
    CHECK(again == shared);
    /* Joining a flow id that does not exist: 87, and *FlowId is left as it was. */
    QOS_FLOWID unknown = shared + 1000;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)b, (PSOCKADDR)&d2, QOSTrafficTypeAudioVideo, 0,
                                   &unknown),
                87);
    CHECK(unknown == shared + 1000);
    /* Flags other than 0 / QOS_NON_ADAPTIVE_FLOW: 87. */
    QOS_FLOWID flagged = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)b, (PSOCKADDR)&d2, QOSTrafficTypeAudioVideo, 4,
                                   &flagged),
                87);
    CHECK(flagged == 0);
    /* Joining an adaptive flow by id: 87. */
    int c = udp_socket(AF_INET, "127.0.0.1");
    QOS_FLOWID join = flow;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)c, (PSOCKADDR)&d1, QOSTrafficTypeVoice, 0, &join),
                87);

    /* Dual stack: an AF_INET6 socket on :: with a v4-mapped destination; ::1 with IPv6. */
    int d6 = udp_socket(AF_INET6, "::");
    struct sockaddr_in6 mapped = v6("::ffff:127.0.0.1", 7000);
    QOS_FLOWID f6 = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)d6, (PSOCKADDR)&mapped, QOSTrafficTypeVoice, 0, &f6));
    int l6 = udp_socket(AF_INET6, "::1");
    struct sockaddr_in6 loop6 = v6("::1", 7001);
    QOS_FLOWID g6 = 0;
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)l6, (PSOCKADDR)&loop6, QOSTrafficTypeVoice, 0, &g6));
    /* An AF_INET socket with an IPv6 destination: 87. */
    QOS_FLOWID bad6 = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)c, (PSOCKADDR)&loop6, QOSTrafficTypeVoice, 0, &bad6),
                87);

    /* A connected socket: DestAddr must equal the peer. */
    int conn = udp_socket(AF_INET, "127.0.0.1");
    struct sockaddr_in peer = v4("127.0.0.1", 5555), wrong = v4("127.0.0.1", 5556);
    CHECK(connect(conn, (struct sockaddr *)&peer, sizeof peer) == 0);
    QOS_FLOWID fc = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)conn, (PSOCKADDR)&wrong, QOSTrafficTypeVoice, 0, &fc),
                87);
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)conn, NULL, QOSTrafficTypeVoice, 0, &fc));

    /* Not a socket: 87. */
    QOS_FLOWID fn = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)1000000, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0, &fn),
                87);

    /* QOSEnumerateFlows with the size protocol. */
    /* (Against a daemon as an administrator, other processes' flows are listed too.) */
    size = 0;
    EXPECT_FAIL(QOSEnumerateFlows(h, &size, NULL), 122);
    CHECK(privileged ? size >= 5 * sizeof(QOS_FLOWID) : size == 5 * sizeof(QOS_FLOWID));
    QOS_FLOWID ids[1024];
    size = sizeof ids;
    EXPECT_OK(QOSEnumerateFlows(h, &size, ids));
    CHECK(privileged ? size >= 5 * sizeof(QOS_FLOWID) : size == 5 * sizeof(QOS_FLOWID));
    int seen = 0;
    for (ULONG i = 0; i < size / sizeof(QOS_FLOWID); i++) {
        seen += ids[i] == flow || ids[i] == shared || ids[i] == f6 || ids[i] == g6 || ids[i] == fc;
    }
    CHECK(seen == 5);
    EXPECT_FAIL(QOSEnumerateFlows(h, NULL, ids), 87);
    /* A buffer with room for one id: 122, *Size = the bytes needed, nothing written. */
    ids[0] = 0xA5A5A5A5u;
    size = sizeof(QOS_FLOWID);
    EXPECT_FAIL(QOSEnumerateFlows(h, &size, ids), 122);
    CHECK(privileged ? size >= 5 * sizeof(QOS_FLOWID) : size == 5 * sizeof(QOS_FLOWID));
    CHECK(ids[0] == 0xA5A5A5A5u);

    /* QOSRemoveSocketFromFlow: one socket, then the whole flow; unknown ids. */
    EXPECT_OK(QOSRemoveSocketFromFlow(h, (SOCKET)a, shared, 0));
    EXPECT_FAIL(QOSRemoveSocketFromFlow(h, (SOCKET)a, shared, 0), 1168);
    EXPECT_OK(QOSRemoveSocketFromFlow(h, 0, shared, 0));
    EXPECT_FAIL(QOSRemoveSocketFromFlow(h, 0, shared, 0), 1168);
    EXPECT_FAIL(QOSRemoveSocketFromFlow(h, 0, 0, 0), 1168);
    EXPECT_FAIL(QOSRemoveSocketFromFlow(h, 0, flow, 1), 87);

    /* Tracking: accepted, nothing to do. */
    EXPECT_OK(QOSStartTrackingClient(h, (PSOCKADDR)&dest, 0));
    EXPECT_OK(QOSStopTrackingClient(h, (PSOCKADDR)&dest, 0));
    EXPECT_FAIL(QOSStartTrackingClient(h, NULL, 0), 87);
    EXPECT_FAIL(QOSStopTrackingClient(h, (PSOCKADDR)&dest, 1), 87);

    /* Success leaves the last error as it was. */
    EXPECT_FAIL(QOSCloseHandle(NULL), 6);
    EXPECT_OK(QOSStartTrackingClient(h, (PSOCKADDR)&dest, 0));
    CHECK(QOSGetLastError() == 6);

    if (in_process) {
        /* An administrator handle (same process): sees every flow and may set any DSCP. */
        QmTestUseInProcessEngine(1);
        HANDLE admin = NULL;
        EXPECT_OK(QOSCreateHandle(&version, &admin));
        int e = udp_socket(AF_INET, "127.0.0.1");
        QOS_FLOWID fa = 0;
        EXPECT_OK(QOSAddSocketToFlow(admin, (SOCKET)e, (PSOCKADDR)&dest, QOSTrafficTypeVoice, 0,
                                     &fa));
        EXPECT_OK(QOSSetFlow(admin, fa, QOSSetOutgoingDSCPValue, sizeof dscp, &dscp, 0, NULL));
        size = sizeof prio;
        EXPECT_OK(QOSQueryFlow(admin, fa, QOSQueryPacketPriority, &size, &prio, 0, NULL));
        CHECK(prio.ConformantDSCPValue == 46);
        dscp = 64;
        EXPECT_FAIL(QOSSetFlow(admin, fa, QOSSetOutgoingDSCPValue, sizeof dscp, &dscp, 0, NULL), 87);
        /* The user's flow is not the administrator's to change. */
        EXPECT_FAIL(QOSSetFlow(admin, flow, QOSSetTrafficType, sizeof tt, &tt, 0, NULL), 1168);
        size = sizeof ids;
        EXPECT_OK(QOSEnumerateFlows(admin, &size, ids));
        CHECK(size == 5 * sizeof(QOS_FLOWID));
        EXPECT_OK(QOSCloseHandle(admin));
        close(e);
    }

    /* TCP may be registered before connect (unbound, DestAddr given); an unbound UDP socket
     * may not (its local port is not known yet): 87. */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    QOS_FLOWID ft = 0;
    struct sockaddr_in server = v4("127.0.0.1", 443);
    EXPECT_OK(QOSAddSocketToFlow(h, (SOCKET)t, (PSOCKADDR)&server, QOSTrafficTypeControl, 0, &ft));
    CHECK(ft != 0);
    QOS_FLOWID ft2 = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)t, NULL, QOSTrafficTypeControl, 0, &ft2), 87);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    QOS_FLOWID fu = 0;
    EXPECT_FAIL(QOSAddSocketToFlow(h, (SOCKET)u, (PSOCKADDR)&server, QOSTrafficTypeControl, 0, &fu),
                87);
    close(t);
    close(u);

    /* Closing removes the flows; the handle is then invalid. */
    EXPECT_OK(QOSCloseHandle(h));
    EXPECT_FAIL(QOSCloseHandle(h), 6);
    size = sizeof prio;
    EXPECT_FAIL(QOSQueryFlow(h, flow, QOSQueryPacketPriority, &size, &prio, 0, NULL), 6);
    EXPECT_FAIL(QOSEnumerateFlows(h, &size, ids), 6);

    close(s);
    close(s2);
    close(a);
    close(b);
    close(c);
    close(d6);
    close(l6);
    close(conn);
    return QM_FINISH("qos2_test");
}

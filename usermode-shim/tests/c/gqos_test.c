/*
 * gqos_test.c - the GQoS C ABI of libqosmark.so (QmSetSocketQos, QmGetSocketQos,
 * QmWaitSocketQosChange), called the way GQoS code fills a QOS structure for SIO_SET_QOS.
 *
 * Built against include/qosmark.h and libqosmark.so by usermode-shim/capi/tests/c_program.rs
 * and run on an in-process engine (QmTestUseInProcessEngine, library built with the cargo
 * feature "test-hooks"). The expected marks and codes are qos-api.md section 11's values,
 * written as numbers. Exit status 0 = every check passed; the failures are printed.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QOSMARK_TEST_HOOKS 1
#include "qosmark.h"
#include "qm_check.h"

/* Weak, so that a library without the hook fails with a message instead of a link error. */
#pragma weak QmTestUseInProcessEngine

static int udp_socket(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("udp socket");
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

static FLOWSPEC flowspec(SERVICETYPE st) {
    FLOWSPEC f;
    f.TokenRate = QOS_NOT_SPECIFIED;
    f.TokenBucketSize = QOS_NOT_SPECIFIED;
    f.PeakBandwidth = QOS_NOT_SPECIFIED;
    f.Latency = QOS_NOT_SPECIFIED;
    f.DelayVariation = QOS_NOT_SPECIFIED;
    f.ServiceType = st;
    f.MaxSduSize = QOS_NOT_SPECIFIED;
    f.MinimumPolicedSize = QOS_NOT_SPECIFIED;
    return f;
}

/* A QOS with `st` sending, NOCHANGE receiving, and `len` bytes of objects at `objects`. */
static QOS make_qos(SERVICETYPE st, void *objects, ULONG len) {
    QOS q;
    q.SendingFlowspec = flowspec(st);
    q.ReceivingFlowspec = flowspec(SERVICETYPE_NOCHANGE);
    q.ProviderSpecific.len = len;
    q.ProviderSpecific.buf = (CHAR *)objects;
    return q;
}

/* Reads the socket's QoS; returns the RSVP_STATUS_INFO behind it. */
static RSVP_STATUS_INFO get(int s, SERVICETYPE *sending) {
    unsigned char buf[sizeof(QOS) + sizeof(RSVP_STATUS_INFO)];
    DWORD needed = 0;
    RSVP_STATUS_INFO info;
    memset(&info, 0, sizeof info);
    EXPECT_OK(QmGetSocketQos((SOCKET)s, (QOS *)(void *)buf, sizeof buf, &needed));
    QOS q;
    memcpy(&q, buf, sizeof q);
    CHECK(needed == sizeof buf);
    CHECK(q.ProviderSpecific.len == sizeof(RSVP_STATUS_INFO));
    CHECK(q.ProviderSpecific.buf == (CHAR *)buf + sizeof(QOS));
    CHECK(q.ReceivingFlowspec.ServiceType == SERVICETYPE_NOCHANGE);
    memcpy(&info, buf + sizeof(QOS), sizeof info);
    CHECK(info.ObjectHdr.ObjectType == RSVP_OBJECT_STATUS_INFO);
    CHECK(info.ObjectHdr.ObjectLength == sizeof(RSVP_STATUS_INFO));
    *sending = q.SendingFlowspec.ServiceType;
    return info;
}

int main(void) {
    if (QmTestUseInProcessEngine == NULL) {
        fprintf(stderr, "libqosmark has no test hook: build it with --features test-hooks\n");
        return 2;
    }
    QmTestUseInProcessEngine(0);

    /* Layouts the library reads (x86-64: the Windows layouts, pointers 8 bytes). */
    CHECK(sizeof(FLOWSPEC) == 32);
    CHECK(sizeof(QOS) == 80 && offsetof(QOS, ProviderSpecific) == 64);
    CHECK(sizeof(QOS_DESTADDR) == 24 && sizeof(RSVP_STATUS_INFO) == 20);
    CHECK(sizeof(QOS_DS_CLASS) == 12 && sizeof(QOS_SD_MODE) == 12);

    int s = udp_socket();
    struct sockaddr_in d1 = v4("192.0.2.1", 5004), d2 = v4("192.0.2.2", 5006);
    SERVICETYPE st = 0;

    /* Never set: NOTRAFFIC, NO_RECEIVERS, without any back end call. */
    RSVP_STATUS_INFO info = get(s, &st);
    CHECK(st == SERVICETYPE_NOTRAFFIC && info.StatusCode == WSA_QOS_NO_RECEIVERS);

    /* The WSAENOBUFS size protocol. */
    unsigned char small[40];
    memset(small, 0xAA, sizeof small);
    DWORD needed = 0;
    EXPECT_FAIL(QmGetSocketQos((SOCKET)s, (QOS *)(void *)small, sizeof small, &needed), 10055);
    ULONG at_start;
    memcpy(&at_start, small, sizeof at_start);
    CHECK(needed == sizeof(QOS) + sizeof(RSVP_STATUS_INFO) && at_start == needed);
    CHECK(small[4] == 0xAA && small[39] == 0xAA);
    EXPECT_FAIL(QmGetSocketQos((SOCKET)s, NULL, 0, &needed), 10055);

    /* Unconnected without QOS_DESTADDR: 87. */
    QOS q = make_qos(SERVICETYPE_CONTROLLEDLOAD, NULL, 0);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &q), 87);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, NULL), 87);

    /* Every service type, with QOS_DESTADDR. */
    struct {
        QOS_DESTADDR dest;
    } o1;
    o1.dest.ObjectHdr.ObjectType = QOS_OBJECT_DESTADDR;
    o1.dest.ObjectHdr.ObjectLength = sizeof(QOS_DESTADDR);
    o1.dest.SocketAddress = (const struct sockaddr *)&d1;
    o1.dest.SocketAddressLength = sizeof d1;
    SERVICETYPE types[4] = {SERVICETYPE_QUALITATIVE, SERVICETYPE_CONTROLLEDLOAD,
                            SERVICETYPE_GUARANTEED, SERVICETYPE_NETWORK_CONTROL};
    ULONG dscp[4] = {0, 24, 40, 48}, pcp[4] = {0, 4, 5, 7};
    for (int i = 0; i < 4; i++) {
        q = make_qos(types[i], &o1, sizeof o1);
        EXPECT_OK(QmSetSocketQos((SOCKET)s, &q));
        info = get(s, &st);
        CHECK(st == types[i]);
        CHECK(info.StatusCode == WSA_QOS_REQUEST_CONFIRMED);
        CHECK(info.ExtendedStatus1 == dscp[i] && info.ExtendedStatus2 == pcp[i]);
    }
    /* A second destination joins the same flow. */
    o1.dest.SocketAddress = (const struct sockaddr *)&d2;
    EXPECT_OK(QmSetSocketQos((SOCKET)s, &q));
    ULONG size = 0;
    HANDLE h = NULL;
    QOS_VERSION version = {1, 0};
    EXPECT_OK(QOSCreateHandle(&version, &h));
    EXPECT_FAIL(QOSEnumerateFlows(h, &size, NULL), 122);
    CHECK(size == sizeof(QOS_FLOWID)); /* one flow of this process, both destinations */

    /* Invalid QOS structures: the codes, and nothing changes. */
    QOS bad = make_qos(0x77, NULL, 0);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_ESERVICETYPE);
    bad = make_qos(SERVICETYPE_GUARANTEED, NULL, 0);
    bad.SendingFlowspec.TokenRate = 1000;
    bad.SendingFlowspec.PeakBandwidth = 999;
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EFLOWSPEC);
    QOS_SD_MODE shape = {{QOS_OBJECT_SD_MODE, sizeof(QOS_SD_MODE)}, TC_NONCONF_SHAPE};
    bad = make_qos(SERVICETYPE_GUARANTEED, &shape, sizeof shape);
    bad.SendingFlowspec.TokenRate = 0;
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EFLOWSPEC);
    bad = make_qos(SERVICETYPE_GUARANTEED, NULL, 8);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EPROVSPECBUF);
    bad = make_qos(SERVICETYPE_GUARANTEED, &shape, sizeof shape - 1);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EOBJLENGTH);
    QOS_OBJECT_HDR unknown = {4003, sizeof(QOS_OBJECT_HDR)};
    bad = make_qos(SERVICETYPE_GUARANTEED, &unknown, sizeof unknown);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EUNKOWNPSOBJ);
    QOS_SD_MODE discard = {{QOS_OBJECT_SD_MODE, sizeof(QOS_SD_MODE)}, TC_NONCONF_DISCARD};
    bad = make_qos(SERVICETYPE_GUARANTEED, &discard, sizeof discard);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_ESDMODEOBJ);
    QOS_DS_CLASS ds64 = {{QOS_OBJECT_DS_CLASS, sizeof(QOS_DS_CLASS)}, 64};
    bad = make_qos(SERVICETYPE_GUARANTEED, &ds64, sizeof ds64);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_BAD_OBJECT);
    QOS_DESTADDR nowhere = {{QOS_OBJECT_DESTADDR, sizeof(QOS_DESTADDR)}, NULL, 16};
    bad = make_qos(SERVICETYPE_GUARANTEED, &nowhere, sizeof nowhere);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_BAD_OBJECT);
    /* An override a user may not use: 5. */
    QOS_DS_CLASS ef = {{QOS_OBJECT_DS_CLASS, sizeof(QOS_DS_CLASS)}, 46};
    bad = make_qos(SERVICETYPE_GUARANTEED, &ef, sizeof ef);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), 5);
    /* Shaping (the engine shapes): GUARANTEED 40 / 5 at 125000 bytes/s. */
    QOS shaped = make_qos(SERVICETYPE_GUARANTEED, &shape, sizeof shape);
    shaped.SendingFlowspec.TokenRate = 125000;
    EXPECT_OK(QmSetSocketQos((SOCKET)s, &shaped));
    info = get(s, &st);
    CHECK(st == SERVICETYPE_GUARANTEED && info.ExtendedStatus1 == 40 && info.ExtendedStatus2 == 5);
    /* A zero TokenRate asking for shaping fails even when QOS_SHAPING_RATE gives the rate. */
    struct {
        QOS_SD_MODE mode;
        QOS_SHAPING_RATE rate;
    } by_rate = {{{QOS_OBJECT_SD_MODE, sizeof(QOS_SD_MODE)}, TC_NONCONF_SHAPE},
                 {{QOS_OBJECT_SHAPING_RATE, sizeof(QOS_SHAPING_RATE)}, 100000}};
    bad = make_qos(SERVICETYPE_GUARANTEED, &by_rate, sizeof by_rate);
    bad.SendingFlowspec.TokenRate = 0;
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_EFLOWSPEC);
    /* NOCHANGE with an object: the object would change the side NOCHANGE keeps. */
    bad = make_qos(SERVICETYPE_NOCHANGE, &o1, sizeof o1);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), WSA_QOS_BAD_OBJECT);
    /* A refused set with a new destination (EF is not the user's): the socket keeps its
       service, mark and single flow. */
    struct sockaddr_in d3 = v4("192.0.2.3", 5008);
    struct {
        QOS_DESTADDR dest;
        QOS_DS_CLASS ds;
    } o2 = {{{QOS_OBJECT_DESTADDR, sizeof(QOS_DESTADDR)}, (const struct sockaddr *)&d3, sizeof d3},
            {{QOS_OBJECT_DS_CLASS, sizeof(QOS_DS_CLASS)}, 46}};
    bad = make_qos(SERVICETYPE_CONTROLLEDLOAD, &o2, sizeof o2);
    EXPECT_FAIL(QmSetSocketQos((SOCKET)s, &bad), 5);
    info = get(s, &st);
    CHECK(st == SERVICETYPE_GUARANTEED && info.ExtendedStatus1 == 40 && info.ExtendedStatus2 == 5);
    size = 0;
    EXPECT_FAIL(QOSEnumerateFlows(h, &size, NULL), 122);
    CHECK(size == sizeof(QOS_FLOWID));
    /* A set without QOS_SD_MODE keeps marking (that it ends shaping is checked by the Rust
       in-process and live tests, which can read the rate). */
    q = make_qos(SERVICETYPE_NETWORK_CONTROL, NULL, 0);
    EXPECT_OK(QmSetSocketQos((SOCKET)s, &q));
    info = get(s, &st);
    CHECK(st == SERVICETYPE_NETWORK_CONTROL && info.ExtendedStatus1 == 48);

    /* NOCHANGE keeps; the in-process engine cannot hold a wait (997); an OVERLAPPED → 50. */
    q = make_qos(SERVICETYPE_NOCHANGE, NULL, 0);
    EXPECT_OK(QmSetSocketQos((SOCKET)s, &q));
    EXPECT_FAIL(QmWaitSocketQosChange((SOCKET)s, NULL), 997);
    EXPECT_FAIL(QmWaitSocketQosChange((SOCKET)s, (LPOVERLAPPED)(void *)&q), 50);
    CHECK(QmGetSocketQosHandle() == NULL && QOSGetLastError() == 50);

    /* NOTRAFFIC ends sending QoS: no flow left; nothing to wait for. */
    q = make_qos(SERVICETYPE_NOTRAFFIC, NULL, 0);
    EXPECT_OK(QmSetSocketQos((SOCKET)s, &q));
    info = get(s, &st);
    CHECK(st == SERVICETYPE_NOTRAFFIC && info.StatusCode == WSA_QOS_NO_RECEIVERS);
    CHECK(info.ExtendedStatus1 == 0 && info.ExtendedStatus2 == 0);
    size = 64;
    QOS_FLOWID ids[16];
    EXPECT_OK(QOSEnumerateFlows(h, &size, ids));
    CHECK(size == 0);
    EXPECT_FAIL(QmWaitSocketQosChange((SOCKET)s, NULL), 1168);

    EXPECT_OK(QOSCloseHandle(h));
    close(s);
    return QM_FINISH("gqos_test");
}

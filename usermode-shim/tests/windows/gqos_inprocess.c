/*
 * The GQoS C ABI on Windows (QmSetSocketQos, QmGetSocketQos, QmWaitSocketQosChange,
 * QmGetSocketQosHandle) with real Winsock sockets and the system's own QOS / FLOWSPEC /
 * QOS_DESTADDR / RSVP_STATUS_INFO types (<winsock2.h>, <qossp.h>, <traffic.h> through
 * qosmark.h), run under Wine against the test-hooks qosmark.dll (in-process engine; Wine has
 * no qosmark driver).
 *
 * Expected values are qos-api.md section 11's: Guaranteed = DSCP 40 / 802.1p 5; codes as
 * documented in qosmark.h. Exit status 0 when every check holds.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <string.h>

#define QOSMARK_TEST_HOOKS 1
#include "qosmark.h"
#include "../c/qm_check.h"

static FLOWSPEC flowspec(SERVICETYPE st)
{
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

int main(void)
{
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        printf("WSAStartup failed\n");
        return 2;
    }
    QmTestUseInProcessEngine(0);

    SOCKET s = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    struct sockaddr_in local, dest;
    memset(&local, 0, sizeof local);
    local.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &local.sin_addr);
    CHECK(bind(s, (struct sockaddr *)&local, sizeof local) == 0);
    dest = local;
    dest.sin_port = htons(5004);

    QOS_DESTADDR d;
    d.ObjectHdr.ObjectType = QOS_OBJECT_DESTADDR;
    d.ObjectHdr.ObjectLength = sizeof d;
    d.SocketAddress = (const struct sockaddr *)&dest;
    d.SocketAddressLength = sizeof dest;
    QOS q;
    q.SendingFlowspec = flowspec(SERVICETYPE_GUARANTEED);
    q.ReceivingFlowspec = flowspec(SERVICETYPE_NOCHANGE);
    q.ProviderSpecific.len = sizeof d;
    q.ProviderSpecific.buf = (char *)&d;
    /* getpeername fails inside (WSAENOTCONN); the last error is kept on success. */
    EXPECT_OK(QmSetSocketQos(s, &q));

    /* The size protocol, then the answer. */
    unsigned char buf[sizeof(QOS) + sizeof(RSVP_STATUS_INFO)];
    DWORD needed = 0;
    memset(buf, 0xAA, sizeof buf);
    EXPECT_FAIL(QmGetSocketQos(s, (QOS *)buf, 16, &needed), WSAENOBUFS);
    ULONG at_start;
    memcpy(&at_start, buf, sizeof at_start);
    CHECK(needed == sizeof buf && at_start == needed && buf[4] == 0xAA);
    EXPECT_OK(QmGetSocketQos(s, (QOS *)buf, sizeof buf, &needed));
    QOS got;
    RSVP_STATUS_INFO info;
    memcpy(&got, buf, sizeof got);
    memcpy(&info, buf + sizeof(QOS), sizeof info);
    CHECK(got.SendingFlowspec.ServiceType == SERVICETYPE_GUARANTEED);
    CHECK(got.ReceivingFlowspec.ServiceType == SERVICETYPE_NOCHANGE);
    CHECK(got.ProviderSpecific.buf == (char *)buf + sizeof(QOS));
    CHECK(info.ObjectHdr.ObjectType == RSVP_OBJECT_STATUS_INFO);
    CHECK(info.StatusCode == WSA_QOS_REQUEST_CONFIRMED);
    CHECK(info.ExtendedStatus1 == 40 && info.ExtendedStatus2 == 5);

    /* Errors. */
    QOS bad = q;
    bad.SendingFlowspec.ServiceType = 0x77;
    EXPECT_FAIL(QmSetSocketQos(s, &bad), WSA_QOS_ESERVICETYPE);
    QOS_DS_CLASS ds = {{QOS_OBJECT_DS_CLASS, sizeof(QOS_DS_CLASS)}, 64};
    bad = q;
    bad.ProviderSpecific.len = sizeof ds;
    bad.ProviderSpecific.buf = (char *)&ds;
    EXPECT_FAIL(QmSetSocketQos(s, &bad), WSA_QOS_BAD_OBJECT);
    bad.ProviderSpecific.len = sizeof ds - 2;
    EXPECT_FAIL(QmSetSocketQos(s, &bad), WSA_QOS_EOBJLENGTH);

    /* No driver under the in-process engine: no handle for a completion port, an OVERLAPPED
     * wait is not available (50), a blocking one would be held (997). */
    CHECK(QmGetSocketQosHandle() == NULL && GetLastError() == 50);
    OVERLAPPED ov;
    memset(&ov, 0, sizeof ov);
    EXPECT_FAIL(QmWaitSocketQosChange(s, &ov), 50);
    EXPECT_FAIL(QmWaitSocketQosChange(s, NULL), 997);

    /* BESTEFFORT ends the sending QoS. */
    q.SendingFlowspec = flowspec(SERVICETYPE_BESTEFFORT);
    q.ProviderSpecific.len = 0;
    q.ProviderSpecific.buf = NULL;
    EXPECT_OK(QmSetSocketQos(s, &q));
    EXPECT_OK(QmGetSocketQos(s, (QOS *)buf, sizeof buf, NULL));
    memcpy(&got, buf, sizeof got);
    memcpy(&info, buf + sizeof(QOS), sizeof info);
    CHECK(got.SendingFlowspec.ServiceType == SERVICETYPE_BESTEFFORT);
    CHECK(info.StatusCode == WSA_QOS_NO_RECEIVERS);
    EXPECT_FAIL(QmWaitSocketQosChange(s, NULL), 1168);

    closesocket(s);
    WSACleanup();
    return QM_FINISH("gqos_inprocess");
}

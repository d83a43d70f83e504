/*
 * qosmark.h - the QOS2 (qWAVE) API, served by qosmark.
 *
 * Drop-in replacement for <qos2.h>: the same function names, parameter order, types, enum
 * values, structures and flags, so a qWAVE program builds against qosmark by including this
 * header instead of <qos2.h> and linking qosmark (qosmark.lib / qosmark.dll on Windows,
 * -lqosmark / libqosmark.so on Linux) instead of qwave.lib.
 *
 * Every function returns BOOL: TRUE, or FALSE with a Win32 error code in the calling
 * thread's last error - GetLastError() on Windows, QOSGetLastError() elsewhere.
 *
 * On Windows the QOS2 handle is a file handle (the qosmark device \\.\QosMark), as qWAVE's
 * is: it may be associated with an I/O completion port. QOSSetFlow / QOSQueryFlow /
 * QOSNotifyFlow with an OVERLAPPED return FALSE + ERROR_IO_PENDING (997) and complete
 * through its event or the port with the QOS2 error code; like DeviceIoControl, they may also
 * succeed at once (TRUE: the event is set and, unless the application asked for
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, a completion packet is queued all the same) or fail
 * at once (FALSE with another code). The Buffer of a pending QOSQueryFlow must stay valid until
 * completion.
 *
 * On systems other than Windows:
 *   HANDLE = void *, SOCKET = the socket's file descriptor as uintptr_t, BOOL = int,
 *   ULONG / DWORD = 32-bit unsigned (as on Windows), OVERLAPPED is an opaque structure:
 *   passing one fails with ERROR_NOT_SUPPORTED (50), and QOSCancel fails with
 *   ERROR_NOT_FOUND (1168) because nothing can be pending.
 *
 * qosmark behaviour that differs from qWAVE (see the qosmark documentation):
 *   - marking starts with QOSAddSocketToFlow; dual-stack sockets with IPv4 or IPv4-mapped
 *     destinations are accepted;
 *   - QOSQueryFlow(QOSQueryFlowFundamentals) and QOSNotifyFlow fail with
 *     ERROR_NOT_SUPPORTED (50): qosmark runs no path probing;
 *   - QOSSetFlow(QOSSetOutgoingRate) shapes the flow: Bandwidth in bit/s at the IP level,
 *     12000 ..= 100000000000, else ERROR_INVALID_PARAMETER (87); QOSShapeOnly and
 *     QOSShapeAndMark delay the excess (treated alike), QOSUseNonConformantMarkings sends it
 *     at once with the non-conformant marks (DSCP 0 / 802.1p 1 unless the administrator's
 *     table says otherwise; QOSQueryPacketPriority reports them). The bucket holds one
 *     1500-byte packet. QOSQueryFlow(QOSQueryOutgoingRate) returns the rate, or fails with
 *     ERROR_NO_DATA (232) when none was set;
 *   - QOSStartTrackingClient / QOSStopTrackingClient succeed and do nothing;
 *   - QOSEnumerateFlows lists every flow for administrators and the caller's own flows for
 *     other users;
 *   - QOSCreateHandle fails with ERROR_SERVICE_DEPENDENCY_FAIL (1068), qWAVE's code for "the
 *     QoS service could not start", when the back end is absent (the qosmark driver on
 *     Windows, qosmarkd on Linux).
 */
#ifndef QOSMARK_H
#define QOSMARK_H

#ifdef _WIN32
#include <winsock2.h>
#include <windows.h>
#define QOSMARK_API __declspec(dllimport)
#else
#include <stdint.h>
#include <sys/socket.h>
#define QOSMARK_API __attribute__((visibility("default")))
#ifndef WINAPI
#define WINAPI
#endif
typedef int BOOL;
typedef uint16_t USHORT;
typedef uint32_t ULONG, *PULONG;
typedef uint32_t DWORD;
typedef uint32_t UINT32;
typedef uint64_t UINT64;
typedef void *PVOID;
typedef void *HANDLE, **PHANDLE;
typedef uintptr_t SOCKET;
typedef struct sockaddr *PSOCKADDR;
/* Opaque here: any non-NULL pointer is refused with ERROR_NOT_SUPPORTED (50). */
typedef struct _OVERLAPPED OVERLAPPED, *LPOVERLAPPED;
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef UINT32 QOS_FLOWID, *PQOS_FLOWID;

#define QOS_NON_ADAPTIVE_FLOW 0x00000002
#define QOS_QUERYFLOW_FRESH 0x00000001
#define QOS_OUTGOING_DEFAULT_MINIMUM_BANDWIDTH 0xFFFFFFFF

typedef struct _QOS_VERSION {
    USHORT MajorVersion;
    USHORT MinorVersion;
} QOS_VERSION, *PQOS_VERSION;

typedef enum _QOS_TRAFFIC_TYPE {
    QOSTrafficTypeBestEffort = 0,
    QOSTrafficTypeBackground = 1,
    QOSTrafficTypeExcellentEffort = 2,
    QOSTrafficTypeAudioVideo = 3,
    QOSTrafficTypeVoice = 4,
    QOSTrafficTypeControl = 5
} QOS_TRAFFIC_TYPE, *PQOS_TRAFFIC_TYPE;

typedef enum _QOS_SET_FLOW {
    QOSSetTrafficType = 0,
    QOSSetOutgoingRate = 1,
    QOSSetOutgoingDSCPValue = 2
} QOS_SET_FLOW, *PQOS_SET_FLOW;

typedef enum _QOS_QUERY_FLOW {
    QOSQueryFlowFundamentals = 0,
    QOSQueryPacketPriority = 1,
    QOSQueryOutgoingRate = 2
} QOS_QUERY_FLOW, *PQOS_QUERY_FLOW;

typedef enum _QOS_NOTIFY_FLOW {
    QOSNotifyCongested = 0,
    QOSNotifyUncongested = 1,
    QOSNotifyAvailable = 2
} QOS_NOTIFY_FLOW, *PQOS_NOTIFY_FLOW;

typedef enum _QOS_SHAPING {
    QOSShapeOnly = 0,
    QOSShapeAndMark = 1,
    QOSUseNonConformantMarkings = 2
} QOS_SHAPING, *PQOS_SHAPING;

typedef enum _QOS_FLOWRATE_REASON {
    QOSFlowRateNotApplicable = 0,
    QOSFlowRateContentChange = 1,
    QOSFlowRateCongestion = 2,
    QOSFlowRateHigherContentEncoding = 3,
    QOSFlowRateUserCaused = 4
} QOS_FLOWRATE_REASON, *PQOS_FLOWRATE_REASON;

typedef struct _QOS_FLOWRATE_OUTGOING {
    UINT64 Bandwidth;
    QOS_SHAPING ShapingBehavior;
    QOS_FLOWRATE_REASON Reason;
} QOS_FLOWRATE_OUTGOING, *PQOS_FLOWRATE_OUTGOING;

typedef struct _QOS_PACKET_PRIORITY {
    ULONG ConformantDSCPValue;
    ULONG NonConformantDSCPValue;
    ULONG ConformantL2Value;
    ULONG NonConformantL2Value;
} QOS_PACKET_PRIORITY, *PQOS_PACKET_PRIORITY;

typedef struct _QOS_FLOW_FUNDAMENTALS {
    BOOL BottleneckBandwidthSet;
    UINT64 BottleneckBandwidth;
    BOOL AvailableBandwidthSet;
    UINT64 AvailableBandwidth;
    BOOL RTTSet;
    UINT32 RTT;
} QOS_FLOW_FUNDAMENTALS, *PQOS_FLOW_FUNDAMENTALS;

QOSMARK_API BOOL WINAPI QOSCreateHandle(PQOS_VERSION Version, PHANDLE QOSHandle);
QOSMARK_API BOOL WINAPI QOSCloseHandle(HANDLE QOSHandle);
QOSMARK_API BOOL WINAPI QOSStartTrackingClient(HANDLE QOSHandle, PSOCKADDR DestAddr,
                                               DWORD Flags);
QOSMARK_API BOOL WINAPI QOSStopTrackingClient(HANDLE QOSHandle, PSOCKADDR DestAddr,
                                              DWORD Flags);
QOSMARK_API BOOL WINAPI QOSEnumerateFlows(HANDLE QOSHandle, PULONG Size, PVOID Buffer);
QOSMARK_API BOOL WINAPI QOSAddSocketToFlow(HANDLE QOSHandle, SOCKET Socket, PSOCKADDR DestAddr,
                                           QOS_TRAFFIC_TYPE TrafficType, DWORD Flags,
                                           PQOS_FLOWID FlowId);
QOSMARK_API BOOL WINAPI QOSRemoveSocketFromFlow(HANDLE QOSHandle, SOCKET Socket,
                                                QOS_FLOWID FlowId, DWORD Flags);
QOSMARK_API BOOL WINAPI QOSSetFlow(HANDLE QOSHandle, QOS_FLOWID FlowId, QOS_SET_FLOW Operation,
                                   ULONG Size, PVOID Buffer, DWORD Flags,
                                   LPOVERLAPPED Overlapped);
QOSMARK_API BOOL WINAPI QOSQueryFlow(HANDLE QOSHandle, QOS_FLOWID FlowId,
                                     QOS_QUERY_FLOW Operation, PULONG Size, PVOID Buffer,
                                     DWORD Flags, LPOVERLAPPED Overlapped);
QOSMARK_API BOOL WINAPI QOSNotifyFlow(HANDLE QOSHandle, QOS_FLOWID FlowId,
                                      QOS_NOTIFY_FLOW Operation, PULONG Size, PVOID Buffer,
                                      DWORD Flags, LPOVERLAPPED Overlapped);
QOSMARK_API BOOL WINAPI QOSCancel(HANDLE QOSHandle, LPOVERLAPPED Overlapped);

/*
 * ---------------------------------------------------------------------------------------
 * GQoS (Winsock QoS) compatibility: per-socket QoS from a QOS structure, with the semantics
 * of SIO_SET_QOS / SIO_GET_QOS / FD_QOS. Windows no longer acts on GQoS; these functions give
 * GQoS code working DSCP / 802.1p marking through qosmark. Same conventions as above: BOOL,
 * the code in the last error (GetLastError() / QOSGetLastError()).
 *
 * The structures and constants are those of <qos.h>, <qossp.h>, <traffic.h> and
 * <winsock2.h>; on Windows they come from those headers, elsewhere they are defined below with
 * the same names, values and layouts (CI compares them with mingw-w64's headers).
 *
 * BOOL QmSetSocketQos(SOCKET s, const QOS *qos)            (for SIO_SET_QOS)
 *   The sending FLOWSPEC's ServiceType selects the mark (DSCP / 802.1p):
 *     SERVICETYPE_QUALITATIVE 0/0, SERVICETYPE_CONTROLLEDLOAD 24/4, SERVICETYPE_GUARANTEED 40/5,
 *     SERVICETYPE_NETWORK_CONTROL 48/7 (or-ing in SERVICE_NO_QOS_SIGNALING changes nothing);
 *     SERVICETYPE_NOTRAFFIC or SERVICETYPE_BESTEFFORT end marking of what the socket sends;
 *     SERVICETYPE_NOCHANGE leaves it as it is (and takes no objects). The receiving FLOWSPEC
 *     is checked, not used (qosmark marks what a host sends).
 *   ProviderSpecific (one buffer of objects, each QOS_OBJECT_HDR + data, ObjectLength with
 *   the header, up to len or QOS_OBJECT_END_OF_LIST):
 *     QOS_DS_CLASS (DSField 0..63) / QOS_TRAFFIC_CLASS (TrafficClass 0..7): override the DSCP
 *       / 802.1p. A value other than the service type's default needs an administrator
 *       (for DSCP also: a value the administrator opened with `qosmarkctl table allow`),
 *       else ERROR_ACCESS_DENIED (5). The defaults are open to every user.
 *     QOS_DESTADDR: destination of an unconnected UDP sender; each call with one adds that
 *       destination (earlier ones stay). A connected socket needs none.
 *     QOS_SD_MODE TC_NONCONF_SHAPE: shape to TokenRate bytes/s (or QOS_SHAPING_RATE's
 *       ShapingRate), excess delayed; TC_NONCONF_BORROW: excess sent at once with the
 *       non-conforming marks, DSCP 0 / 802.1p 1 (the administrator's table may change them).
 *       A call without QOS_SD_MODE ends shaping. A back end without shaping fails the whole
 *       call with WSA_QOS_TRAFFIC_CTRL_ERROR (11014) and nothing changes.
 *   Errors (nothing changes): WSA_QOS_ESERVICETYPE 11016 (unknown ServiceType, either
 *   direction), WSA_QOS_EFLOWSPEC 11017 (shaping with TokenRate 0, even with
 *   QOS_SHAPING_RATE, or with no rate at all; PeakBandwidth below TokenRate),
 *   WSA_QOS_EPROVSPECBUF 11018 (len without buf; a truncated header; fewer than 8 zero bytes
 *   after the last object are struct padding and ignored), WSA_QOS_EOBJLENGTH 11022
 *   (ObjectLength too small, too large, or not the object's size), WSA_QOS_EUNKOWNPSOBJ 11024
 *   (unknown ObjectType; an RSVP_STATUS_INFO, as QmGetSocketQos returns it, is ignored), WSA_QOS_ESDMODEOBJ 11029 (TC_NONCONF_DISCARD,
 *   TC_NONCONF_BORROW_PLUS, other modes), WSA_QOS_ESHAPERATEOBJ 11030 (ShapingRate 0),
 *   WSA_QOS_BAD_OBJECT 11013 (an object with SERVICETYPE_NOCHANGE, an object twice,
 *   DSField > 63, TrafficClass > 7, a bad QOS_DESTADDR); ERROR_INVALID_PARAMETER 87 (qos NULL;
 *   an unconnected socket without QOS_DESTADDR); the QOS2 codes of the back end (5, 183,
 *   1450, 1068 = no back end, 1164 = reconnect).
 *   On a socket that already marks, a failed call restores the previous mark and rate and
 *   adds no destination, so an error leaves the socket as it was, unless the back end also
 *   refuses the restoring request (request budget spent, 1450; back end gone); the next
 *   successful call then applies in full. Objects with SERVICETYPE_NOCHANGE are refused (a
 *   qosmark choice: they all describe the sending side). A socket value that was closed (on
 *   Linux: or closed and given to a new socket) reads as never set.
 *   Marking also ends when the socket is closed, shut down for sending (shutdown(SD_SEND /
 *   SHUT_WR)) or disconnected: on Linux the back end notices within about two seconds; on
 *   Windows the driver notices a socket's close and a TCP disconnect, not yet
 *   shutdown(SD_SEND) nor a UDP disconnect: end those with SERVICETYPE_NOTRAFFIC.
 *
 * BOOL QmGetSocketQos(SOCKET s, QOS *qos, DWORD size, DWORD *needed)   (for SIO_GET_QOS)
 *   Writes the QOS and, right behind it in the same buffer, one RSVP_STATUS_INFO that
 *   ProviderSpecific points to: size needed = sizeof(QOS) + sizeof(RSVP_STATUS_INFO), also
 *   stored in *needed (may be NULL). A smaller size: FALSE + WSAENOBUFS (10055) with that
 *   size written as a ULONG at the start of the buffer (when size >= 4), as GQoS did.
 *   SendingFlowspec: as last set; its ServiceType reads SERVICETYPE_NOTRAFFIC once marking
 *   ended without the application (close, shutdown, disconnect) and for a socket never set.
 *   ReceivingFlowspec: ServiceType SERVICETYPE_NOCHANGE (one direction per answer), the rest
 *   QOS_NOT_SPECIFIED. RSVP_STATUS_INFO: StatusCode WSA_QOS_REQUEST_CONFIRMED (11009) while
 *   marking, WSA_QOS_NO_RECEIVERS (11008) when not; ExtendedStatus1 = the DSCP applied,
 *   ExtendedStatus2 = the 802.1p requested (0 when none).
 *
 * BOOL QmWaitSocketQosChange(SOCKET s, LPOVERLAPPED overlapped)         (for FD_QOS)
 *   Completes when the socket's QoS state changes (marking ends, or its DSCP / 802.1p
 *   changes); then read it with QmGetSocketQos. The back end holds the request (no polling).
 *   overlapped NULL: blocks (on its own connection to the back end; other calls go on).
 *   With an OVERLAPPED (Windows only; elsewhere ERROR_NOT_SUPPORTED, 50): FALSE +
 *   ERROR_IO_PENDING (997), completing through its event, or through the I/O completion port
 *   the application associated with the handle QmGetSocketQosHandle() returns, with 0 bytes;
 *   CancelIoEx(QmGetSocketQosHandle(), overlapped) cancels it (995), and so does the end of
 *   the process. The OVERLAPPED must stay valid until it completes. (The driver's holding of
 *   this request is written but has not run on Windows yet.) ERROR_NOT_FOUND (1168): the
 *   socket has no QoS to watch.
 *
 * HANDLE QmGetSocketQosHandle(void)
 *   The process's hidden qosmark handle used by the functions above (opened if needed):
 *   on Windows the \.\QosMark file handle to associate with an I/O completion port. NULL +
 *   last error when it cannot be opened; NULL + ERROR_NOT_SUPPORTED (50) on other systems.
 *   Do not close it.
 */
#ifdef _WIN32
#include <qossp.h>
#include <traffic.h>
#else
typedef char CHAR;
typedef ULONG SERVICETYPE;
#define SERVICETYPE_NOTRAFFIC 0x00000000
#define SERVICETYPE_BESTEFFORT 0x00000001
#define SERVICETYPE_CONTROLLEDLOAD 0x00000002
#define SERVICETYPE_GUARANTEED 0x00000003
#define SERVICETYPE_NETWORK_UNAVAILABLE 0x00000004
#define SERVICETYPE_GENERAL_INFORMATION 0x00000005
#define SERVICETYPE_NOCHANGE 0x00000006
#define SERVICETYPE_NONCONFORMING 0x00000009
#define SERVICETYPE_NETWORK_CONTROL 0x0000000A
#define SERVICETYPE_QUALITATIVE 0x0000000D
#define SERVICE_BESTEFFORT 0x80010000
#define SERVICE_CONTROLLEDLOAD 0x80020000
#define SERVICE_GUARANTEED 0x80040000
#define SERVICE_QUALITATIVE 0x80200000
#define SERVICE_NO_TRAFFIC_CONTROL 0x81000000
#define SERVICE_NO_QOS_SIGNALING 0x40000000
#define QOS_NOT_SPECIFIED 0xFFFFFFFF
#define POSITIVE_INFINITY_RATE 0xFFFFFFFE

typedef struct _flowspec {
    ULONG TokenRate;
    ULONG TokenBucketSize;
    ULONG PeakBandwidth;
    ULONG Latency;
    ULONG DelayVariation;
    SERVICETYPE ServiceType;
    ULONG MaxSduSize;
    ULONG MinimumPolicedSize;
} FLOWSPEC, *PFLOWSPEC, *LPFLOWSPEC;

typedef struct _WSABUF {
    ULONG len;
    CHAR *buf;
} WSABUF, *LPWSABUF;

typedef struct _QualityOfService {
    FLOWSPEC SendingFlowspec;
    FLOWSPEC ReceivingFlowspec;
    WSABUF ProviderSpecific;
} QOS, *LPQOS;

typedef struct _QOS_OBJECT_HDR {
    ULONG ObjectType;
    ULONG ObjectLength;
} QOS_OBJECT_HDR, *LPQOS_OBJECT_HDR;

#define QOS_GENERAL_ID_BASE 2000
#define QOS_OBJECT_END_OF_LIST (0x00000001 + QOS_GENERAL_ID_BASE)
#define QOS_OBJECT_SD_MODE (0x00000002 + QOS_GENERAL_ID_BASE)
#define QOS_OBJECT_SHAPING_RATE (0x00000003 + QOS_GENERAL_ID_BASE)
#define QOS_OBJECT_DESTADDR (0x00000004 + QOS_GENERAL_ID_BASE)

typedef struct _QOS_SD_MODE {
    QOS_OBJECT_HDR ObjectHdr;
    ULONG ShapeDiscardMode;
} QOS_SD_MODE, *LPQOS_SD_MODE;

#define TC_NONCONF_BORROW 0
#define TC_NONCONF_SHAPE 1
#define TC_NONCONF_DISCARD 2
#define TC_NONCONF_BORROW_PLUS 3

typedef struct _QOS_SHAPING_RATE {
    QOS_OBJECT_HDR ObjectHdr;
    ULONG ShapingRate;
} QOS_SHAPING_RATE, *LPQOS_SHAPING_RATE;

#define RSVP_OBJECT_ID_BASE 1000
#define RSVP_OBJECT_STATUS_INFO (0x00000000 + RSVP_OBJECT_ID_BASE)

typedef struct _RSVP_STATUS_INFO {
    QOS_OBJECT_HDR ObjectHdr;
    ULONG StatusCode;
    ULONG ExtendedStatus1;
    ULONG ExtendedStatus2;
} RSVP_STATUS_INFO, *LPRSVP_STATUS_INFO;

typedef struct _QOS_DESTADDR {
    QOS_OBJECT_HDR ObjectHdr;
    const struct sockaddr *SocketAddress;
    ULONG SocketAddressLength;
} QOS_DESTADDR, *LPQOS_DESTADDR;

#define QOS_TRAFFIC_GENERAL_ID_BASE 4000
#define QOS_OBJECT_DS_CLASS (0x00000001 + QOS_TRAFFIC_GENERAL_ID_BASE)
#define QOS_OBJECT_TRAFFIC_CLASS (0x00000002 + QOS_TRAFFIC_GENERAL_ID_BASE)

typedef struct _QOS_TRAFFIC_CLASS {
    QOS_OBJECT_HDR ObjectHdr;
    ULONG TrafficClass;
} QOS_TRAFFIC_CLASS, *LPQOS_TRAFFIC_CLASS;

typedef struct _QOS_DS_CLASS {
    QOS_OBJECT_HDR ObjectHdr;
    ULONG DSField;
} QOS_DS_CLASS, *LPQOS_DS_CLASS;

#define WSAENOBUFS 10055
#define WSA_QOS_RECEIVERS 11005
#define WSA_QOS_SENDERS 11006
#define WSA_QOS_NO_SENDERS 11007
#define WSA_QOS_NO_RECEIVERS 11008
#define WSA_QOS_REQUEST_CONFIRMED 11009
#define WSA_QOS_ADMISSION_FAILURE 11010
#define WSA_QOS_POLICY_FAILURE 11011
#define WSA_QOS_BAD_STYLE 11012
#define WSA_QOS_BAD_OBJECT 11013
#define WSA_QOS_TRAFFIC_CTRL_ERROR 11014
#define WSA_QOS_GENERIC_ERROR 11015
#define WSA_QOS_ESERVICETYPE 11016
#define WSA_QOS_EFLOWSPEC 11017
#define WSA_QOS_EPROVSPECBUF 11018
#define WSA_QOS_EFILTERSTYLE 11019
#define WSA_QOS_EFILTERTYPE 11020
#define WSA_QOS_EFILTERCOUNT 11021
#define WSA_QOS_EOBJLENGTH 11022
#define WSA_QOS_EFLOWCOUNT 11023
#define WSA_QOS_EUNKOWNPSOBJ 11024
#define WSA_QOS_EPOLICYOBJ 11025
#define WSA_QOS_EFLOWDESC 11026
#define WSA_QOS_EPSFLOWSPEC 11027
#define WSA_QOS_EPSFILTERSPEC 11028
#define WSA_QOS_ESDMODEOBJ 11029
#define WSA_QOS_ESHAPERATEOBJ 11030
#define WSA_QOS_RESERVED_PETYPE 11031
#endif

QOSMARK_API BOOL WINAPI QmSetSocketQos(SOCKET Socket, const QOS *Qos);
QOSMARK_API BOOL WINAPI QmGetSocketQos(SOCKET Socket, QOS *Qos, DWORD Size, DWORD *Needed);
QOSMARK_API BOOL WINAPI QmWaitSocketQosChange(SOCKET Socket, LPOVERLAPPED Overlapped);
QOSMARK_API HANDLE WINAPI QmGetSocketQosHandle(void);

#ifndef _WIN32
/* The calling thread's last QOS2 error code (what GetLastError() returns on Windows). */
QOSMARK_API DWORD QOSGetLastError(void);
#endif

#ifdef QOSMARK_TEST_HOOKS
/* Only in libraries built with the cargo feature "test-hooks" (tests): later QOSCreateHandle
 * calls open handles on one in-process engine of this process, as an administrator when
 * admin != 0. Never present in a shipped library. */
QOSMARK_API void QmTestUseInProcessEngine(int admin);
#endif

#ifdef __cplusplus
}
#endif

#endif /* QOSMARK_H */

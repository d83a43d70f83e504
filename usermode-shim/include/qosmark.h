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
 *     at once with the non-conformant marks (DSCP 0 / 802.1p 0 unless the administrator's
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

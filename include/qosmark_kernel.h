/*
 * qosmark_kernel.h - qosmark's kernel-mode interface, for drivers written in C.
 *
 * Other drivers obtain a versioned function table from qosmark.sys and register flows by
 * 5-tuple (or by local endpoint) with a traffic type or a DSCP and an optional 802.1p
 * priority, at IRQL <= DISPATCH_LEVEL, without a user-mode hop.
 *
 * Include <ntddk.h> (or <wdm.h>) first. The Rust definitions in qosmark-abi
 * (abi/src/kernel.rs) are the reference: a test compiles this header with mingw-w64's DDK
 * headers and checks every size and offset below against them. The full contract (statuses,
 * IRQL, lifetime) and a complete client are in docs/kernel-interface.md.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef QOSMARK_KERNEL_H
#define QOSMARK_KERNEL_H

#ifdef __cplusplus
extern "C" {
#endif

#ifndef _IRQL_requires_max_
#define _IRQL_requires_max_(irql)
#endif

/* ---- Obtaining the table ------------------------------------------------------------- */

/* NT name of qosmark's control device (IoGetDeviceObjectPointer). */
#define QOSMARK_KERNEL_DEVICE_NAME L"\\Device\\QosMark"

/* {5a658248-013e-4f12-a300-64b7cdce919d}: QOSMARK_QUERY_INTERFACE_INPUT.InterfaceType. */
#define QOSMARK_KERNEL_INTERFACE_GUID_INIT \
    { 0x5a658248, 0x013e, 0x4f12, { 0xa3, 0x00, 0x64, 0xb7, 0xcd, 0xce, 0x91, 0x9d } }

/* Version of the table and of every structure it uses. */
#define QOSMARK_KERNEL_INTERFACE_VERSION 1

/* Sent as IRP_MJ_INTERNAL_DEVICE_CONTROL (IoBuildDeviceIoControlRequest with
 * InternalDeviceIoControl = TRUE) at PASSIVE_LEVEL; 0x00122400. */
#define IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE \
    CTL_CODE(FILE_DEVICE_NETWORK, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)

/* Answered by every entry except CloseHandle (and by the query) once qosmark has begun to
 * unload: release your reference and query again later. Same value as STATUS_DEVICE_REMOVED. */
#define QOSMARK_STATUS_UNLOADING ((NTSTATUS)0xC00002B6L)

/* Highest IRQL at which every entry may be called. */
#define QOSMARK_KERNEL_INTERFACE_MAX_IRQL 2 /* DISPATCH_LEVEL */

/* Input buffer of the query (24 bytes). */
typedef struct _QOSMARK_QUERY_INTERFACE_INPUT {
    USHORT Size;        /* sizeof(QOSMARK_KERNEL_INTERFACE) */
    USHORT Version;     /* QOSMARK_KERNEL_INTERFACE_VERSION */
    ULONG Reserved;     /* 0 */
    GUID InterfaceType; /* QOSMARK_KERNEL_INTERFACE_GUID_INIT */
} QOSMARK_QUERY_INTERFACE_INPUT, *PQOSMARK_QUERY_INTERFACE_INPUT;

/* ---- Flows ------------------------------------------------------------------------------ */

/* An opaque kernel handle, never 0. */
typedef ULONG64 QOSMARK_KHANDLE, *PQOSMARK_KHANDLE;

/* QOSMARK_FLOW_SPEC.Flags: no remote endpoint; the flow matches every packet sent from the
 * local address and port (an unspecified local address = any local address of the family). */
#define QOSMARK_FLOW_ANY_REMOTE 0x01

/* QOSMARK_FLOW_MARK.Kind */
#define QOSMARK_MARK_TRAFFIC_TYPE 0 /* Value is a QOS_TRAFFIC_TYPE, 0..5 */
#define QOSMARK_MARK_DSCP 1         /* Value is a DSCP, 0..63 */

/* QOSMARK_FLOW_MARK.Pcp / QOSMARK_FLOW_INFO.Pcp: no 802.1p priority. */
#define QOSMARK_PCP_NONE 0xFFFFFFFFUL
/* QOSMARK_FLOW_INFO.Dscp: no DSCP is added. */
#define QOSMARK_DSCP_NONE 0xFFFFFFFFUL

/* What a flow's packets get (12 bytes). */
typedef struct _QOSMARK_FLOW_MARK {
    ULONG Kind;  /* QOSMARK_MARK_TRAFFIC_TYPE or QOSMARK_MARK_DSCP */
    ULONG Value; /* traffic type or DSCP */
    ULONG Pcp;   /* 802.1p 0..7, or QOSMARK_PCP_NONE */
} QOSMARK_FLOW_MARK, *PQOSMARK_FLOW_MARK;

/* A flow (56 bytes). Ports and addresses as in SOCKADDR_IN / SOCKADDR_IN6: sin_port (network
 * byte order), sin_addr / sin6_addr octets; an IPv4 address fills the first 4 bytes and the
 * other 12 are 0. Scope ids and flow labels are not part of a flow. */
typedef struct _QOSMARK_FLOW_SPEC {
    USHORT Family;           /* AF_INET (2) or AF_INET6 (23) */
    UCHAR Protocol;          /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
    UCHAR Flags;             /* 0 or QOSMARK_FLOW_ANY_REMOTE */
    USHORT LocalPort;        /* network byte order, not 0 */
    USHORT RemotePort;       /* network byte order; 0 with QOSMARK_FLOW_ANY_REMOTE */
    UCHAR LocalAddress[16];
    UCHAR RemoteAddress[16]; /* all 0 with QOSMARK_FLOW_ANY_REMOTE */
    QOSMARK_FLOW_MARK Mark;
    ULONG Reserved;          /* 0 */
} QOSMARK_FLOW_SPEC, *PQOSMARK_FLOW_SPEC;

/* QueryFlow's answer (40 bytes). */
typedef struct _QOSMARK_FLOW_INFO {
    ULONG Dscp;            /* DSCP packets get, or QOSMARK_DSCP_NONE */
    ULONG Pcp;             /* 802.1p requested, or QOSMARK_PCP_NONE */
    ULONG64 Packets;       /* packets that matched the flow */
    ULONG64 Bytes;         /* their IP length */
    ULONG64 Marked;        /* packets rewritten */
    ULONG64 AlreadyMarked; /* packets that already carried the mark */
} QOSMARK_FLOW_INFO, *PQOSMARK_FLOW_INFO;

/* ---- Entries (all: IRQL <= DISPATCH_LEVEL, non-paged arguments there, never wait) ----- */

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_OPEN_HANDLE(PVOID Context, ULONG Flags /* 0 */, PQOSMARK_KHANDLE Handle);
typedef QOSMARK_OPEN_HANDLE *PQOSMARK_OPEN_HANDLE;

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_CLOSE_HANDLE(PVOID Context, QOSMARK_KHANDLE Handle);
typedef QOSMARK_CLOSE_HANDLE *PQOSMARK_CLOSE_HANDLE;

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_ADD_FLOW(PVOID Context, QOSMARK_KHANDLE Handle, const QOSMARK_FLOW_SPEC *Spec,
                 PULONG FlowId);
typedef QOSMARK_ADD_FLOW *PQOSMARK_ADD_FLOW;

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_CHANGE_FLOW(PVOID Context, QOSMARK_KHANDLE Handle, ULONG FlowId,
                    const QOSMARK_FLOW_MARK *Mark);
typedef QOSMARK_CHANGE_FLOW *PQOSMARK_CHANGE_FLOW;

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_QUERY_FLOW(PVOID Context, QOSMARK_KHANDLE Handle, ULONG FlowId,
                   PQOSMARK_FLOW_INFO Info);
typedef QOSMARK_QUERY_FLOW *PQOSMARK_QUERY_FLOW;

typedef _IRQL_requires_max_(DISPATCH_LEVEL) NTSTATUS NTAPI
QOSMARK_REMOVE_FLOW(PVOID Context, QOSMARK_KHANDLE Handle, ULONG FlowId);
typedef QOSMARK_REMOVE_FLOW *PQOSMARK_REMOVE_FLOW;

/* The table (96 bytes on 64-bit Windows). Starts with the fields of the WDK's INTERFACE.
 * On success the query has taken one reference for you: call
 * InterfaceDereference(Context) exactly once when you stop using the table. */
typedef struct _QOSMARK_KERNEL_INTERFACE {
    USHORT Size;                                 /* bytes qosmark filled in */
    USHORT Version;                              /* QOSMARK_KERNEL_INTERFACE_VERSION */
    PVOID Context;                               /* first argument of every entry */
    PINTERFACE_REFERENCE InterfaceReference;     /* <= DISPATCH_LEVEL */
    PINTERFACE_DEREFERENCE InterfaceDereference; /* <= DISPATCH_LEVEL */
    ULONG64 Generation;                          /* differs for every load of qosmark */
    PQOSMARK_OPEN_HANDLE OpenHandle;
    PQOSMARK_CLOSE_HANDLE CloseHandle;
    PQOSMARK_ADD_FLOW AddFlow;
    PQOSMARK_CHANGE_FLOW ChangeFlow;
    PQOSMARK_QUERY_FLOW QueryFlow;
    PQOSMARK_REMOVE_FLOW RemoveFlow;
    ULONG MaxIrql;                               /* QOSMARK_KERNEL_INTERFACE_MAX_IRQL */
    ULONG Reserved;
} QOSMARK_KERNEL_INTERFACE, *PQOSMARK_KERNEL_INTERFACE;

#ifdef __cplusplus
}
#endif

#endif /* QOSMARK_KERNEL_H */

/*
 * Compile-time comparison of our header with mingw-w64's qos2.h: check.sh generates
 * qos2_expected.h from the oracle's values (qos2_values.c -DQM_ORACLE) as one
 * _Static_assert per fact, and this file compiles them against qosmark.h. Any enumerator,
 * size or offset that differs is a compile error that names it.
 */
#include <winsock2.h>
#include <windows.h>
#include <stddef.h>

#include "qosmark.h"

#include "qos2_expected.h"

/* Not in mingw-w64's qos2.h (qos-api.md §2.1: old mingw lacks them); the values are the
   SDK's and Wine's, as tabulated there. */
_Static_assert(QOS_NON_ADAPTIVE_FLOW == 0x00000002, "QOS_NON_ADAPTIVE_FLOW");
_Static_assert(QOS_QUERYFLOW_FRESH == 0x00000001, "QOS_QUERYFLOW_FRESH");

/*
 * The eleven QOS2 prototypes, for check.sh to compare: compiled with -fsyntax-only and
 * -aux-info, which writes every declared function's prototype with its parameter types as the
 * header spells them. Once against mingw-w64's <qos2.h> (-DQM_ORACLE, the independent oracle)
 * and once against our "qosmark.h"; the QOS* lines must be identical (name, parameter order,
 * parameter types; WINBOOL is read as BOOL).
 */
#include <winsock2.h>
#include <windows.h>

#ifdef QM_ORACLE
/* As in qos2_values.c: mingw-w64's qos2.h uses these before defining them. */
typedef UINT32 QOS_FLOWID, *PQOS_FLOWID;
#include <qos2.h>
#else
#include "qosmark.h"
#endif

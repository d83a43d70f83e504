/*
 * Lists the values of qos2_facts.h for one header, at compile time, without running
 * anything: compiled with -S, each fact becomes an assembler comment line
 *     #QMFACT <expression> = <value>
 * (the constant is printed by the compiler through an "i" operand and the %c modifier).
 *
 *   -DQM_ORACLE   mingw-w64's <qos2.h>
 *   (default)     our "qosmark.h"
 *
 * check.sh turns the oracle's lines into _Static_asserts and compiles them against
 * qosmark.h (qos2_assert.c), so a difference is a compile error naming the fact.
 */
#include <winsock2.h>
#include <windows.h>
#include <stddef.h>

#ifdef QM_ORACLE
/* mingw-w64's qos2.h uses QOS_FLOWID before its typedef and PQOS_FLOWID without ever
   defining it; declare both as the header means them (C11 allows the header's identical
   typedef to repeat ours). */
typedef UINT32 QOS_FLOWID, *PQOS_FLOWID;
#include <qos2.h>
#else
#include "qosmark.h"
#endif

#define QM_FACT(expr) __asm__ volatile("\n#QMFACT " #expr " = %c0" : : "i"((long long)(expr)));

void qm_facts(void);
void qm_facts(void)
{
#include "qos2_facts.h"
}

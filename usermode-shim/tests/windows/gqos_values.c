/*
 * Lists the values of gqos_facts.h for one set of headers, at compile time, without running
 * anything: compiled with -S, each fact becomes an assembler comment line
 *     #QMFACT <expression> = <value>
 * (as qos2_values.c does).
 *
 *   -DQM_ORACLE   mingw-w64's <winsock2.h> (QOS, WSABUF, <qos.h>), <qossp.h>, <traffic.h>;
 *                 compiled with x86_64-w64-mingw32-gcc
 *   (default)     our "qosmark.h" outside Windows (its own GQoS definitions), compiled with
 *                 the host's x86_64 gcc: the header Linux programs include
 *
 * check.sh compares the two lists line by line.
 */
#ifdef QM_ORACLE
#include <winsock2.h>
#include <windows.h>
#include <qossp.h>
#include <traffic.h>
#else
#include "qosmark.h"
#endif
#include <stddef.h>

/* As a signed 32-bit value: every GQoS fact fits 32 bits, and x86-64 immediates beyond
   INT32_MAX cannot be printed this way (0x80010000 reads as -2147418112 on both sides). */
#define QM_FACT(expr) __asm__ volatile("\n#QMFACT " #expr " = %c0" : : "i"((int)(expr)));

void qm_gqos_facts(void);
void qm_gqos_facts(void)
{
#include "gqos_facts.h"
}

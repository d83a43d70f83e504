/*
 * An unmodified-style qWAVE client, built with mingw-w64 against include/qosmark.h and
 * qosmark.dll's import library (libqosmark.dll.a), run under Wine where no qosmark driver
 * exists. It checks the error paths of QOSCreateHandle / QOSCloseHandle exactly as a
 * qWAVE program sees them: FALSE and the code from GetLastError().
 *
 *   - parameter errors come first and are 87 (ERROR_INVALID_PARAMETER): (NULL, NULL),
 *     (&v, NULL), and versions 0.0, 1.5, 2.0 (qos-api.md §5, Wine's Windows-validated
 *     conformance tests);
 *   - version 1.0 with the driver absent fails with QM_ABSENT_ERROR, the code the shim
 *     documents for "driver not installed or not started";
 *   - QOSCloseHandle(NULL) is FALSE + 6 (ERROR_INVALID_HANDLE, qos-api.md §9).
 *
 * Exit status 0 when every check holds; otherwise each failed check is printed.
 */
#include <winsock2.h>
#include <windows.h>
#include <stdio.h>

#include "qosmark.h"

#ifndef QM_ABSENT_ERROR
#define QM_ABSENT_ERROR ERROR_SERVICE_DEPENDENCY_FAIL
#endif

static int failures;

static void expect_failure(const char *what, BOOL ok, DWORD expected)
{
    DWORD got = GetLastError();
    if (ok) {
        printf("FAIL %s: returned TRUE, expected FALSE + %lu\n", what, (unsigned long)expected);
        failures++;
    } else if (got != expected) {
        printf("FAIL %s: GetLastError() = %lu, expected %lu\n", what, (unsigned long)got,
               (unsigned long)expected);
        failures++;
    } else {
        printf("ok   %s: FALSE + %lu\n", what, (unsigned long)got);
    }
}

int main(void)
{
    static const QOS_VERSION bad_versions[] = { { 0, 0 }, { 1, 5 }, { 2, 0 } };
    QOS_VERSION v = { 1, 0 };
    HANDLE h = NULL;
    unsigned i;

    SetLastError(0xdead);
    expect_failure("QOSCreateHandle(NULL, NULL)", QOSCreateHandle(NULL, NULL),
                   ERROR_INVALID_PARAMETER);
    SetLastError(0xdead);
    expect_failure("QOSCreateHandle(&1.0, NULL)", QOSCreateHandle(&v, NULL),
                   ERROR_INVALID_PARAMETER);
    for (i = 0; i < sizeof bad_versions / sizeof bad_versions[0]; i++) {
        QOS_VERSION bad = bad_versions[i];
        char what[64];
        snprintf(what, sizeof what, "QOSCreateHandle(&%u.%u, &h)", bad.MajorVersion,
                 bad.MinorVersion);
        SetLastError(0xdead);
        expect_failure(what, QOSCreateHandle(&bad, &h), ERROR_INVALID_PARAMETER);
    }

    SetLastError(0xdead);
    expect_failure("QOSCreateHandle(&1.0, &h) without the driver", QOSCreateHandle(&v, &h),
                   QM_ABSENT_ERROR);

    SetLastError(0xdead);
    expect_failure("QOSCloseHandle(NULL)", QOSCloseHandle(NULL), ERROR_INVALID_HANDLE);

    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}

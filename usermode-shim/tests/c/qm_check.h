/*
 * qm_check.h - the check macros of qosmark's C API test programs: tests/c/qos2_test.c and
 * tests/c/gqos_test.c (Linux, libqosmark.so) and tests/windows/inprocess.c and
 * tests/windows/gqos_inprocess.c (mingw-w64, qosmark.dll under Wine). Include it after
 * qosmark.h (the Windows programs after <windows.h>).
 *
 *   CHECK(cond)             cond must hold.
 *   EXPECT_FAIL(call, code) call must return FALSE with this last error.
 *   EXPECT_OK(call)         call must return TRUE; on Windows the last error must also be the
 *                           marker set before the call (a successful call leaves
 *                           GetLastError() as it was, qos-api.md section 5).
 *   QM_FINISH(name)         prints "<name>: N checks, M failures"; evaluates to the exit
 *                           status (0 = every check passed).
 *
 * A failed check prints the file, the line, the expression and the last error (stderr) and is
 * counted; the program goes on, so one run lists every failure.
 */
#ifndef QM_CHECK_H
#define QM_CHECK_H

#include <stdio.h>

static int failures = 0;
static int checks = 0;

#ifdef _WIN32
#define QM_LAST_ERROR() ((unsigned long)GetLastError())
#else
#define QM_LAST_ERROR() ((unsigned long)QOSGetLastError())
#endif

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error %lu)\n", __FILE__,         \
                    __LINE__, #cond, QM_LAST_ERROR());                                     \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define EXPECT_FAIL(call, code)                                                            \
    do {                                                                                   \
        BOOL ok_ = (call);                                                                 \
        unsigned long e_ = QM_LAST_ERROR();                                                \
        checks++;                                                                          \
        if (ok_ || e_ != (unsigned long)(code)) {                                          \
            fprintf(stderr, "%s:%d: %s: expected FALSE/%lu, got %s/%lu\n", __FILE__,        \
                    __LINE__, #call, (unsigned long)(code), ok_ ? "TRUE" : "FALSE", e_);   \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#ifdef _WIN32
#define EXPECT_OK(call)                                                                    \
    do {                                                                                   \
        SetLastError(0x5eed);                                                              \
        BOOL ok_ = (call);                                                                 \
        unsigned long e_ = QM_LAST_ERROR();                                                \
        checks++;                                                                          \
        if (!ok_ || e_ != 0x5eed) {                                                        \
            fprintf(stderr, "%s:%d: %s: expected TRUE with the last error kept, got %s/%lu\n", \
                    __FILE__, __LINE__, #call, ok_ ? "TRUE" : "FALSE", e_);                \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)
#else
#define EXPECT_OK(call)                                                                    \
    do {                                                                                   \
        BOOL ok_ = (call);                                                                 \
        checks++;                                                                          \
        if (!ok_) {                                                                        \
            fprintf(stderr, "%s:%d: %s failed with %lu\n", __FILE__, __LINE__, #call,      \
                    QM_LAST_ERROR());                                                      \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)
#endif

#define QM_FINISH(name)                                                                    \
    (printf("%s: %d checks, %d failures\n", (name), checks, failures), failures == 0 ? 0 : 1)

#endif /* QM_CHECK_H */

/* check.h — the few macros the C tests share. Each test file is one
 * program; main() calls its cases and returns non-zero if any check failed. */
#ifndef THA_CHECK_H
#define THA_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;

#define CHECK(c)                                                               \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #c);                                                       \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

/* An int-returning call that must succeed. */
#define CHECK_OK(call)                                                         \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_ != 0) {                                                        \
            fprintf(stderr, "%s:%d: %s -> %d (%s)\n", __FILE__, __LINE__,      \
                    #call, rc_, tha_strerror(rc_));                            \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

#define CHECK_RC(call, want)                                                   \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_ != (want)) {                                                   \
            fprintf(stderr, "%s:%d: %s -> %d (%s), want %d\n", __FILE__,       \
                    __LINE__, #call, rc_, tha_strerror(rc_), (int)(want));     \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                            \
    do {                                                                       \
        const char *h_ = (hay);                                                \
        if (!h_ || !strstr(h_, (needle))) {                                    \
            fprintf(stderr, "%s:%d: \"%s\" lacks \"%s\"\n", __FILE__,          \
                    __LINE__, h_ ? h_ : "(null)", (needle));                   \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

#define RUN(test)                                                              \
    do {                                                                       \
        int before_ = check_failures;                                          \
        test();                                                                \
        printf("%s %s\n", check_failures == before_ ? "ok  " : "FAIL", #test); \
    } while (0)

#define CHECK_DONE()                                                           \
    (printf("%s: %d failed\n", __FILE__, check_failures), check_failures != 0)

#endif

/* tests/test.h — a tiny test harness: TEST(name) { ... CHECK(cond); ... }.
 * Tests self-register; tests/test_main.c runs them and prints "N passed, N failed". */
#ifndef DM_TEST_H
#define DM_TEST_H

#include <stdio.h>

typedef void (*dm_test_fn)(void);
void dm_test_register(const char *name, dm_test_fn fn);
void dm_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Directory of test data (tests/data unless DM_TEST_DATA is set). */
const char *dm_test_data(void);
/* This test's temporary directory: created empty on first use, removed when the test ends. */
const char *dm_test_tmpdir(void);

#define TEST(fn)                                                                                   \
    static void fn(void);                                                                          \
    __attribute__((constructor)) static void fn##_register(void) { dm_test_register(#fn, fn); }    \
    static void fn(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dm_test_fail(__FILE__, __LINE__, "%s", #cond);                                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dm_test_fail(__FILE__, __LINE__, __VA_ARGS__);                                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#endif

/* ship.h — for the C tests: one frame of src (THA_FRAME_SNAPSHOT or
 * THA_FRAME_DELTA), sized, encoded and applied to dst; the status of the
 * first step that failed, both heaps' messages printed when one did. */
#ifndef THA_TEST_SHIP_H
#define THA_TEST_SHIP_H

#include "tha.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>

static inline int ship(tha_heap_t *src, tha_heap_t *dst, int kind) {
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(src, kind, &n));
    void *buf = malloc(n);
    int rc = tha_heap_encode(src, kind, buf, n, &len);
    CHECK(len == n);
    if (rc == 0) rc = tha_heap_apply(dst, buf, len);
    if (rc) fprintf(stderr, "ship: %s | %s\n", tha_heap_errmsg(src), tha_heap_errmsg(dst));
    free(buf);
    return rc;
}

#endif

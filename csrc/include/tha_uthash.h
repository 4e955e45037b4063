/* tha_uthash.h — uthash 2.x (Troy D. Hanson's uthash.h, unmodified) on a
 * tha heap. Include it where you would include <uthash.h>: it points
 * uthash's allocation hooks at a tha heap, then includes <uthash.h>.
 *
 *   tha_uthash_register(s)   registers uthash's own structs in a schema
 *                            (UT_hash_table, UT_hash_bucket, UT_hash_handle,
 *                            with every pointer field typed), before seal.
 *   THA_FIELD_UT_HASH_HANDLE(s, id, T, f)
 *                            the UT_hash_handle field f of your struct T:
 *                            one line per handle (hh, hh_by_name, ...).
 *   tha_uthash_use(h)        this thread's uthash allocates from heap h
 *                            (and h gets the size rules for uthash's
 *                            tables); NULL: from none.
 *
 * Your elements you allocate yourself, typed (tha_heap_alloc(h, USER, 1,
 * &u)), as you would malloc them; keys live in the element or in the heap
 * (HASH_ADD_KEYPTR with a key allocated in the heap: a pointer to a string
 * literal or a stack buffer cannot be mirrored). What uthash allocates is
 * its table header (UT_hash_table), the bucket array (UT_hash_bucket[n],
 * reallocated twice as large as the table grows) and, with HASH_BLOOM, the
 * bloom filter (uint8_t[HASH_BLOOM_BYTELEN]): uthash_malloc gives only a
 * size, so tha_uthash_use installs size rules on the heap
 * (tha_heap_size_type: sizeof(UT_hash_table) is one table;
 * tha_heap_size_multiple: n x sizeof(UT_hash_bucket) is n buckets). The
 * bloom filter is told apart by the text of uthash's argument
 * (HASH_BLOOM_BYTELEN), not by its size: from HASH_BLOOM 12 on its size is
 * also that of a bucket array.
 *
 * uthash writes the heap with plain stores (links, counters, the buckets
 * it fills), so use a tracking mode that finds them: THA_TRACK_AUTO, wp or
 * diff. In explicit mode you would have to touch what uthash wrote.
 *
 * Pointers between elements and into the table are rebased like every
 * other pointer, so a mirror at any address is searched and walked with
 * uthash's own macros (HASH_FIND_*, HASH_ITER, HASH_COUNT) as the active
 * is. A mirror that is promoted calls tha_uthash_use on its heap, after
 * tha_heap_set_tracking, and goes on adding and deleting: the size rules
 * are the heap handle's (tha.h, "Size rules"), so they are installed there
 * and then, and the type ids are found in the heap's schema by name.
 *
 * The current heap is one per thread (a weak thread-local, one copy per
 * linked program). Allocation failures: without HASH_NONFATAL_OOM uthash
 * calls uthash_fatal, which here prints the heap's detail message (which
 * size, what rule is missing, the capacity) and aborts, unless you defined
 * uthash_fatal yourself; with HASH_NONFATAL_OOM uthash_malloc returns NULL
 * and uthash rolls the add back and calls your uthash_nonfatal_oom (read
 * the reason with tha_heap_errmsg(tha_uthash_heap())). A uthash_free that
 * fails (the table lives in another heap than this thread's) is a program
 * error: it prints why and aborts.
 *
 * Compiles as C11 and as C++11, with uthash 2.x; define your own
 * uthash_expand_fyi, HASH_FUNCTION and the like before including this
 * header as you would before <uthash.h>. uthash_malloc/uthash_free must not
 * be defined already, and <uthash.h> must not have been included before.
 */
#ifndef THA_UTHASH_H
#define THA_UTHASH_H

#ifdef UTHASH_H
#error "include tha_uthash.h instead of <uthash.h> (uthash.h was read first, with other allocation hooks)"
#endif
#if defined(uthash_malloc) || defined(uthash_free)
#error "tha_uthash.h defines uthash_malloc and uthash_free; do not define them too"
#endif

#include "tha.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* This thread's heap for uthash. Weak: every file including the header
 * defines it, the linker keeps one. */
__attribute__((weak)) __thread tha_heap_t *tha_uthash__heap = NULL;

static inline tha_heap_t *tha_uthash_heap(void) { return tha_uthash__heap; }

__attribute__((noreturn, cold)) static inline void tha_uthash__die(const char *what) {
    tha_heap_t *h = tha_uthash__heap;
    fprintf(stderr, "uthash on a tha heap: %s: %s\n", what,
            h ? tha_heap_errmsg(h)
              : "this thread has no heap (call tha_uthash_use(h) first)");
    abort();
}

/* uthash_malloc(sz): text is sz as written in uthash.h. */
static inline void *tha_uthash__malloc(size_t size, const char *text) {
    tha_heap_t *h = tha_uthash__heap;
    void *p = NULL;
    if (!h) return NULL;
    /* the bloom filter's size may equal a bucket array's: by name */
    int rc = strcmp(text, "HASH_BLOOM_BYTELEN") == 0 && size <= UINT32_MAX
                 ? tha_heap_alloc(h, THA_T_U8, (uint32_t)size, &p)
                 : tha_heap_alloc_sized(h, size, &p);
    return rc ? NULL : p;
}

static inline void tha_uthash__free(void *p) {
    tha_heap_t *h = tha_uthash__heap;
    if (!h) tha_uthash__die("uthash_free");
    if (tha_heap_free(h, p)) tha_uthash__die("uthash_free");
}

#ifdef __cplusplus
}
#endif

#define uthash_malloc(sz) tha_uthash__malloc((size_t)(sz), #sz)
#define uthash_free(ptr, sz) tha_uthash__free(ptr)
#ifndef uthash_fatal
#define uthash_fatal(msg) tha_uthash__die(msg)
#endif

#include <uthash.h>

#ifdef __cplusplus
static_assert(sizeof(unsigned) == 4 && sizeof(ptrdiff_t) == 8,
              "tha_uthash.h: uthash's unsigned fields are 32-bit, hho 64-bit");
#else
_Static_assert(sizeof(unsigned) == 4 && sizeof(ptrdiff_t) == 8,
               "tha_uthash.h: uthash's unsigned fields are 32-bit, hho 64-bit");
#endif

/* The UT_hash_handle field f of struct T: a UT_hash_handle by value, whose
 * fields tha_uthash_register declares (tbl: the table; prev/next: the
 * neighbouring elements' starts, void *; hh_prev/hh_next: the neighbours'
 * handles in the bucket chain, interior pointers to the UT_hash_handle
 * inside another element; key: void *, into the element or another
 * allocation; keylen, hashv). */
#define THA_FIELD_UT_HASH_HANDLE(s, id, T, f)                                 \
    THA_FIELD_STRUCT(s, id, T, f, "UT_hash_handle", 0)

/* Registers UT_hash_table, UT_hash_bucket and UT_hash_handle (as this file
 * was compiled: HASH_BLOOM adds the filter's fields) in s, before seal.
 * 0, or the first failure's code (tha_schema_errmsg(s) says which). */
static inline int tha_uthash_register(tha_schema_t *s) {
    uint32_t t, b, hh;
    int rc = THA_STRUCT(s, UT_hash_table, "UT_hash_table", &t);
#define THA_UTHASH__ADD(call) if (!rc) rc = (call)
    THA_UTHASH__ADD(THA_FIELD_PTR(s, t, UT_hash_table, buckets, "UT_hash_bucket", 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, num_buckets, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, log2_num_buckets, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, num_items, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, t, UT_hash_table, tail, "UT_hash_handle", 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, hho, THA_T_I64, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, ideal_chain_maxlen, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, nonideal_items, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, ineff_expands, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, noexpand, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, signature, THA_T_U32, 0));
#ifdef HASH_BLOOM
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, bloom_sig, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, t, UT_hash_table, bloom_bv, "uint8_t", 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, t, UT_hash_table, bloom_nbits, THA_T_U8, 0));
#endif
    THA_UTHASH__ADD(THA_STRUCT(s, UT_hash_bucket, "UT_hash_bucket", &b));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, b, UT_hash_bucket, hh_head, "UT_hash_handle", 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, b, UT_hash_bucket, count, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, b, UT_hash_bucket, expand_mult, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_STRUCT(s, UT_hash_handle, "UT_hash_handle", &hh));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, tbl, "UT_hash_table", 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, prev, "void", 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, next, "void", 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, hh_prev, "UT_hash_handle", 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, hh_next, "UT_hash_handle", 0));
    THA_UTHASH__ADD(THA_FIELD_PTR(s, hh, UT_hash_handle, key, "void", 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, hh, UT_hash_handle, keylen, THA_T_U32, 0));
    THA_UTHASH__ADD(THA_FIELD_SCALAR(s, hh, UT_hash_handle, hashv, THA_T_U32, 0));
#undef THA_UTHASH__ADD
    return rc;
}

/* This thread's uthash allocates from h from now on: installs on h the
 * size rules for uthash's tables (a no-op if they are there), finding
 * UT_hash_table and UT_hash_bucket in h's schema by name. h NULL: no heap
 * (an add that needs memory then fails as out of memory). Returns 0;
 * THA_ENOTFOUND if h's schema lacks them (not built with
 * tha_uthash_register; tha_schema_errmsg(tha_heap_schema(h)) names the
 * type); THA_EINVAL (tha_heap_errmsg) if its UT_hash_table has another
 * size than this file's (uthash compiled with another HASH_BLOOM). On
 * failure the current heap is unchanged. */
static inline int tha_uthash_use(tha_heap_t *h) {
    uint32_t table, bucket;
    if (!h) {
        tha_uthash__heap = NULL;
        return 0;
    }
    const tha_schema_t *s = tha_heap_schema(h);
    int rc = tha_schema_type_by_name(s, "UT_hash_table", &table);
    if (!rc) rc = tha_schema_type_by_name(s, "UT_hash_bucket", &bucket);
    if (!rc) rc = tha_heap_size_type(h, sizeof(UT_hash_table), table);
    if (!rc) rc = tha_heap_size_multiple(h, bucket);
    if (!rc) tha_uthash__heap = h;
    return rc;
}

#endif /* THA_UTHASH_H */

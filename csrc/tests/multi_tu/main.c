/* main.c — sets the current heap; table.c's uthash calls allocate from it
 * (see table.c). Prints "ok" and exits 0 when every item is found. */
#include <stdio.h>
#include "tha_uthash.h"
#include "multi.h"

int main(void) {
    tha_schema_t *s;
    uint32_t I, D;
    if (tha_schema_create(&s) || tha_uthash_register(s) || THA_STRUCT(s, struct item, "item", &I) ||
        THA_FIELD_SCALAR(s, I, struct item, id, THA_T_I32, 0) ||
        THA_FIELD_UT_HASH_HANDLE(s, I, struct item, hh) || THA_STRUCT(s, struct db, "db", &D) ||
        THA_FIELD_PTR(s, D, struct db, items, "item", 0) || tha_schema_seal(s))
        return 1;
    tha_heap_t *h;
    struct db *d;
    if (tha_heap_create(&h, s, 4 << 20, THA_TRACK_DIFF) || tha_uthash_use(h) ||
        tha_heap_alloc(h, tha_schema_type_id(s, D), 1, (void **)&d) || tha_root_set(h, "db", d))
        return 1;
    for (int i = 0; i < 500; i++) {
        struct item *it;
        if (tha_heap_alloc(h, tha_schema_type_id(s, I), 1, (void **)&it)) return 1;
        it->id = i;
        add_item(d, it);
    }
    tha_obj_t o;
    for (int i = 0; i < 500; i++)
        if (!find_item(d, i)) return 1;
    /* the table and its buckets are in the heap: table.c allocated there */
    if (tha_heap_lookup(h, d->items->hh.tbl, &o) || tha_heap_lookup(h, d->items->hh.tbl->buckets, &o))
        return 1;
    size_t leaks;
    if (tha_heap_check(h) || tha_leaks(h, NULL, 0, &leaks) || leaks) return 1;
    printf("ok\n");
    tha_uthash_use(NULL);
    tha_heap_destroy(h);
    tha_schema_release(s);
    return 0;
}

/* table.c — with main.c: the current heap set by tha_uthash_use in one
 * file is the heap uthash allocates from in another (one weak thread-local
 * per program). tests/test_native.py links the two. */
#include "tha_uthash.h"
#include "multi.h"

void add_item(struct db *d, struct item *it) { HASH_ADD_INT(d->items, id, it); }

struct item *find_item(struct db *d, int id) {
    struct item *it = NULL;
    HASH_FIND_INT(d->items, &id, it);
    return it;
}

// uthash.cpp — tha_uthash.h compiles and works as C++11: a table built by
// uthash on a tha heap, mirrored to another heap and searched there
// (tests/test_native.py builds and runs it with -Wall -Wextra -Werror).
#include "tha_uthash.h"
#include <cstdio>
struct item { int id; char name[16]; UT_hash_handle hh; };
struct db { item *items; };
int main() {
    tha_schema_t *s;
    uint32_t I, D;
    if (tha_schema_create(&s) || tha_uthash_register(s) || THA_STRUCT(s, item, "item", &I) ||
        THA_FIELD_SCALAR(s, I, item, id, THA_T_I32, 0) ||
        THA_FIELD_SCALAR(s, I, item, name, THA_T_CHAR, 16) ||
        THA_FIELD_UT_HASH_HANDLE(s, I, item, hh) || THA_STRUCT(s, db, "db", &D) ||
        THA_FIELD_PTR(s, D, db, items, "item", 0) || tha_schema_seal(s)) {
        std::printf("schema: %s\n", tha_schema_errmsg(s));
        return 1;
    }
    tha_heap_t *a, *b;
    db *d;
    if (tha_heap_create(&a, s, 4 << 20, THA_TRACK_DIFF) ||
        tha_heap_create(&b, s, 4 << 20, THA_TRACK_EXPLICIT) || tha_uthash_use(a) ||
        tha_heap_alloc(a, tha_schema_type_id(s, D), 1, reinterpret_cast<void **>(&d)) ||
        tha_root_set(a, "db", d))
        return 1;
    for (int i = 0; i < 1000; i++) {
        item *it;
        if (tha_heap_alloc(a, tha_schema_type_id(s, I), 1, reinterpret_cast<void **>(&it)))
            return 1;
        it->id = i;
        std::snprintf(it->name, sizeof it->name, "n%d", i);
        HASH_ADD_INT(d->items, id, it);
    }
    size_t n, len;
    if (tha_heap_frame_size(a, THA_FRAME_SNAPSHOT, &n)) return 1;
    void *frame = std::malloc(n);
    if (tha_heap_encode(a, THA_FRAME_SNAPSHOT, frame, n, &len) || tha_heap_apply(b, frame, len))
        return 1;
    std::free(frame);
    void *r;
    if (tha_root_get(b, "db", &r)) return 1;
    db *m = static_cast<db *>(r);
    for (int i = 0; i < 1000; i++) {
        item *it = nullptr;
        HASH_FIND_INT(m->items, &i, it);
        if (!it || it->id != i || tha_heap_check(b)) return 1;
    }
    std::printf("ok %u items\n", HASH_COUNT(m->items));
    tha_uthash_use(nullptr);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
    return 0;
}

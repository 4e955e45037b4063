// macros.cpp — tha.h's registration macros compile and work as C++11
// (tests/test_native.py builds and runs it with -Wall -Wextra -Werror).
#include "tha.h"
#include <cstdio>
struct dept;
struct emp { char name[32]; uint32_t id; double salary; emp *mgr; dept *d; void (*hook)(void); };
struct dept { char name[16]; emp *head; emp staff[2]; };
static void hook() {}
int main() {
    tha_schema_t *s;
    uint32_t E, D;
    if (tha_schema_create(&s) || THA_STRUCT(s, emp, "emp", &E) ||
        THA_FIELD_SCALAR(s, E, emp, name, THA_T_CHAR, 32) ||
        THA_FIELD_SCALAR(s, E, emp, id, THA_T_U32, 0) ||
        THA_FIELD_SCALAR(s, E, emp, salary, THA_T_F64, 0) ||
        THA_FIELD_PTR(s, E, emp, mgr, "emp", 0) || THA_FIELD_PTR(s, E, emp, d, "dept", 0) ||
        THA_FIELD_FUNC(s, E, emp, hook, 0) || THA_STRUCT(s, dept, "dept", &D) ||
        THA_FIELD_SCALAR(s, D, dept, name, THA_T_CHAR, 16) ||
        THA_FIELD_PTR(s, D, dept, head, "emp", 0) ||
        THA_FIELD_STRUCT(s, D, dept, staff, "emp", 2) ||
        tha_schema_add_func(s, "hook", hook) || tha_schema_seal(s)) {
        std::printf("schema: %s\n", tha_schema_errmsg(s));
        return 1;
    }
    tha_heap_t *h;
    void *p;
    if (tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT) ||
        tha_heap_alloc(h, tha_schema_type_id(s, D), 1, &p) || tha_heap_check(h)) return 1;
    std::printf("ok %u types\n", tha_schema_type_count(s));
    tha_heap_destroy(h);
    tha_schema_release(s);
    return 0;
}

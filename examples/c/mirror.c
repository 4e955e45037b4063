/* mirror.c — libtha from a native C program.
 *
 * Registers two structs with the THA_* macros, builds a small org chart in
 * one heap, mirrors it into a second heap (snapshot, then a delta after a
 * change), and checks that the mirror's pointers lead to the same places.
 *
 *   make -C csrc && cc -Icsrc/include examples/c/mirror.c csrc/build/libtha.a
 *   (or: cc $(pkg-config --cflags tha) mirror.c $(pkg-config --libs tha))
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tha.h"

struct dept;
struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct dept *dept;
    struct emp *reports[4];
};
struct dept {
    char name[32];
    uint32_t id;
};

#define TRY(call)                                                              \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_) {                                                             \
            fprintf(stderr, "%s failed: %s\n", #call, tha_strerror(rc_));      \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static uint32_t EMP, DEPT;

static tha_schema_t *org_schema(void) {
    tha_schema_t *s;
    TRY(tha_schema_create(&s));
    TRY(THA_STRUCT(s, struct emp, "emp", &EMP));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    TRY(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    TRY(THA_FIELD_PTR(s, EMP, struct emp, dept, "dept", 0)); /* declared below */
    TRY(THA_FIELD_PTR(s, EMP, struct emp, reports, "emp", 4));
    TRY(THA_STRUCT(s, struct dept, "dept", &DEPT));
    TRY(THA_FIELD_SCALAR(s, DEPT, struct dept, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_SCALAR(s, DEPT, struct dept, id, THA_T_U32, 0));
    TRY(tha_schema_seal(s));
    return s;
}

/* Encodes a frame of `kind` from src and applies it to dst. */
static void ship(tha_heap_t *src, tha_heap_t *dst, int kind) {
    size_t size, len;
    TRY(tha_heap_frame_size(src, kind, &size));
    void *frame = malloc(size);
    if (!frame) exit(1);
    if (tha_heap_encode(src, kind, frame, size, &len)) {
        fprintf(stderr, "encode: %s\n", tha_heap_errmsg(src));
        exit(1);
    }
    if (tha_heap_apply(dst, frame, len)) {
        fprintf(stderr, "apply: %s\n", tha_heap_errmsg(dst));
        exit(1);
    }
    printf("%s: %zu bytes\n", kind == THA_FRAME_SNAPSHOT ? "snapshot" : "delta", len);
    free(frame);
}

int main(void) {
    tha_schema_t *schema = org_schema();
    tha_heap_t *active, *standby;
    TRY(tha_heap_create(&active, schema, 16 << 20, THA_TRACK_EXPLICIT));
    TRY(tha_heap_create(&standby, schema, 16 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(schema); /* each heap holds its own reference */

    struct dept *eng;
    struct emp *boss, *team;
    TRY(tha_heap_alloc(active, DEPT, 1, (void **)&eng));
    TRY(tha_heap_alloc(active, EMP, 1, (void **)&boss));
    TRY(tha_heap_alloc(active, EMP, 3, (void **)&team));
    strcpy(eng->name, "engineering");
    strcpy(boss->name, "ann");
    boss->dept = eng;
    for (int i = 0; i < 3; i++) {
        snprintf(team[i].name, sizeof team[i].name, "dev%d", i);
        team[i].mgr = boss;
        team[i].dept = eng;
        boss->reports[i] = &team[i];
    }
    TRY(tha_root_set(active, "boss", boss));
    ship(active, standby, THA_FRAME_SNAPSHOT);

    /* a plain write, then tell the heap (explicit tracking) */
    team[2].salary = 123.5;
    TRY(tha_heap_touch(active, &team[2].salary, sizeof team[2].salary));
    ship(active, standby, THA_FRAME_DELTA);

    struct emp *b;
    TRY(tha_root_get(standby, "boss", (void **)&b));
    int ok = (void *)b != (void *)boss && strcmp(b->name, "ann") == 0 &&
             strcmp(b->dept->name, "engineering") == 0 &&
             b->reports[2]->mgr == b && b->reports[2]->salary == 123.5 &&
             strcmp(b->reports[1]->name, "dev1") == 0;
    printf("standby at %p (active at %p): boss %s, report 2 earns %.1f -> %s\n",
           tha_heap_base(standby), tha_heap_base(active), b->name,
           b->reports[2]->salary, ok ? "mirrored" : "MISMATCH");
    tha_heap_destroy(active);
    tha_heap_destroy(standby);
    return ok ? 0 : 1;
}

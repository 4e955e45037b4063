/* gen_corpus.c — writes the seed corpora of the fuzzers from real messages
 * and schemas: `make -C csrc fuzz-corpus` (or build/fuzz/gen_corpus DIR).
 *   DIR/fuzz_schema/   canonical schemas: the fuzz schema, nested structs,
 *                      unions and bitfields, functions, a 40-deep chain
 *   DIR/fuzz_session/  per setup of fuzz_session.c: the records of what a
 *                      real peer said (handshake, bulk, deltas, acks), so
 *                      mutations start from messages that get through
 * Seeds are deterministic (fixed lineage); nonces are not, but records carry
 * no tags and the fuzzer derives keys from the HELLOs of its own run. */
#include "session_common.h"

#include <errno.h>
#include <sys/stat.h>

static const char *outdir;

static void put_file(const char *target, const char *name, const void *p, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", outdir, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

static void put_schema(const char *name, tha_schema_t *s) {
    if (tha_schema_seal(s)) {
        fprintf(stderr, "%s: %s\n", name, tha_schema_errmsg(s));
        exit(1);
    }
    size_t n;
    tha_schema_serialize(s, NULL, 0, &n);
    uint8_t *b = malloc(n);
    tha_schema_serialize(s, b, n, &n);
    put_file("fuzz_schema", name, b, n);
    free(b);
    tha_schema_release(s);
}

static void schemas(void) {
    put_schema("emp_dept", fz_schema());
    tha_schema_t *s;
    uint32_t a, b, u;
    /* nested arrays of structs holding pointers */
    tha_schema_create(&s);
    tha_schema_add_struct(s, "pt", 16, 8, 0, &a);
    tha_schema_add_field(s, a, &(tha_field_t){.name = "x", .kind = THA_K_SCALAR, .prim = THA_T_I32});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "p", .offset = 8, .kind = THA_K_PTR, .target = "pt"});
    tha_schema_add_struct(s, "grid", 16 * 12 + 8, 8, 0, &b);
    tha_schema_add_field(s, b, &(tha_field_t){.name = "cells", .kind = THA_K_STRUCT, .target = "pt", .dims = {3, 4}});
    tha_schema_add_field(s, b, &(tha_field_t){.name = "name", .offset = 192, .kind = THA_K_PTR, .target = "char"});
    put_schema("nested_arrays", s);
    /* a union and bitfields */
    tha_schema_create(&s);
    tha_schema_add_struct(s, "bits", 8, 4, 0, &a);
    tha_schema_add_field(s, a, &(tha_field_t){.name = "lo", .kind = THA_K_BITS, .prim = THA_T_U32, .bits = {0, 3}});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "hi", .kind = THA_K_BITS, .prim = THA_T_U32, .bits = {3, 29}});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "f", .offset = 4, .kind = THA_K_SCALAR, .prim = THA_T_F32});
    tha_schema_add_struct(s, "num", 8, 8, 1, &u);
    tha_schema_add_field(s, u, &(tha_field_t){.name = "i", .kind = THA_K_SCALAR, .prim = THA_T_I64});
    tha_schema_add_field(s, u, &(tha_field_t){.name = "d", .kind = THA_K_SCALAR, .prim = THA_T_F64});
    tha_schema_add_field(s, u, &(tha_field_t){.name = "b", .kind = THA_K_STRUCT, .target = "bits"});
    put_schema("union_bits", s);
    /* function pointers with signatures */
    tha_schema_create(&s);
    tha_schema_add_struct(s, "ops", 24, 8, 0, &a);
    tha_schema_add_field(s, a, &(tha_field_t){.name = "cb", .kind = THA_K_FUNC, .sig = "int(*)(int,char*)", .dims = {2}});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "self", .offset = 16, .kind = THA_K_PTR, .target = "ops"});
    tha_schema_add_func(s, "alpha", NULL);
    tha_schema_add_func(s, "beta", NULL);
    put_schema("funcs", s);
    /* a chain 40 deep */
    tha_schema_create(&s);
    char nm[16], nx[16];
    uint32_t ids[40];
    for (int i = 0; i < 40; i++) {
        snprintf(nm, sizeof nm, "d%02d", i);
        tha_schema_add_struct(s, nm, 8, 8, 0, &ids[i]);
    }
    for (int i = 0; i < 40; i++) {
        snprintf(nx, sizeof nx, "d%02d", i + 1);
        tha_schema_add_field(s, ids[i], &(tha_field_t){.name = "x", .kind = i < 39 ? THA_K_STRUCT : THA_K_PTR,
                                                       .target = i < 39 ? nx : "void"});
    }
    put_schema("deep40", s);
    /* tag masks (nested too) and data externs: format 2 */
    tha_schema_create(&s);
    tha_schema_add_struct(s, "rb", 32, 8, 0, &a);
    tha_schema_add_field(s, a, &(tha_field_t){.name = "left", .kind = THA_K_PTR, .target = "rb"});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "parent", .offset = 8, .kind = THA_K_PTR, .target = "rb", .tag_mask = 1});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "key", .offset = 16, .kind = THA_K_PTR, .target = "char", .tag_mask = 6});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "n", .offset = 24, .kind = THA_K_SCALAR, .prim = THA_T_U64});
    tha_schema_add_struct(s, "tree", 40, 8, 0, &b);
    tha_schema_add_field(s, b, &(tha_field_t){.name = "root", .kind = THA_K_STRUCT, .target = "rb"});
    tha_schema_add_field(s, b, &(tha_field_t){.name = "head", .offset = 32, .kind = THA_K_PTR, .target = "void"});
    tha_schema_add_extern(s, "head", 16, NULL);
    tha_schema_add_extern(s, "literal", 6, NULL);
    put_schema("externs_tags", s);
    /* pointers to pointers: the implicit pointer types "tab*" and "tab**" */
    tha_schema_create(&s);
    tha_schema_add_struct(s, "tab", 24, 8, 0, &a);
    tha_schema_add_field(s, a, &(tha_field_t){.name = "slots", .kind = THA_K_PTR, .target = "tab *"});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "rows", .offset = 8, .kind = THA_K_PTR, .target = "tab **"});
    tha_schema_add_field(s, a, &(tha_field_t){.name = "names", .offset = 16, .kind = THA_K_PTR, .target = "char *"});
    put_schema("pointer_arrays", s);
}

static void seed(const char *name, uint8_t sel, const fz_tape_t *body) {
    fz_tape_t t = {0};
    fz_tape_put(&t, &sel, 1);
    fz_tape_put(&t, body->data, body->len);
    put_file("fuzz_session", name, t.data, t.len);
    free(t.data);
}

/* One real conversation as fuzz_session.c sets it up, then `deltas` more
 * frames; seeds for every setup taken from it. */
static void sessions(int keyed) {
    tha_schema_t *schema = fz_schema();
    tha_heap_t *ah = fz_heap(schema);
    tha_backlog_t *bl;
    tha_backlog_create(&bl, 1 << 20);
    fz_settle(ah, bl);
    tha_session_t *s = fz_session(THA_ROLE_STANDBY, keyed, NULL, NULL);
    tha_session_t *a = fz_session(THA_ROLE_ACTIVE, keyed, ah, bl);
    fz_tape_t a2s = {0}, s2a = {0};
    uint64_t now = 1000;
    tha_session_start(s, now);
    tha_session_start(a, now);
    while (fz_move(a, s, now, &a2s) + fz_move(s, a, now, &s2a)) {
        fz_drain_events(a, NULL);
        fz_drain_events(s, NULL);
    }
    uint64_t a_setup = fz_count_msgs(&a2s, keyed, 1);
    uint64_t s_setup = fz_count_msgs(&s2a, keyed, 2);
    if (getenv("FZ_DEBUG")) fprintf(stderr, "setup: a %llu s %llu msgs, s2a %zu bytes\n", (unsigned long long)a_setup, (unsigned long long)s_setup, s2a.len);
    /* deltas: a write, an alloc, a free, a heartbeat's worth of time */
    struct fz_emp *es;
    tha_root_get(ah, "staff", (void **)&es);
    uint32_t e;
    tha_schema_type_by_name(schema, "emp", &e);
    for (int round = 0; round < 3; round++) {
        es[round].salary = 1000 + round;
        tha_heap_touch(ah, &es[round], sizeof es[round]);
        void *p;
        if (round == 1) tha_heap_alloc(ah, e, 1, &p), es[3].mgr = p,
                        tha_heap_touch(ah, &es[3], sizeof es[3]);
        size_t fsz, flen;
        tha_heap_frame_size(ah, THA_FRAME_DELTA, &fsz);
        void *f = malloc(fsz);
        tha_heap_encode(ah, THA_FRAME_DELTA, f, fsz, &flen);
        tha_backlog_push(bl, f, flen);
        free(f);
        tha_session_pump(a, round == 2 ? THA_ACK_PERSISTED : THA_ACK_APPLIED);
        now += 300;
        tha_session_tick(a, now);
        tha_session_tick(s, now);
        while (fz_move(a, s, now, &a2s) + fz_move(s, a, now, &s2a)) {
            fz_drain_events(a, NULL);
            fz_drain_events(s, NULL);
        }
    }
    if (getenv("FZ_DEBUG")) fprintf(stderr, "end: a %llu s %llu msgs, s2a %zu bytes\n", (unsigned long long)fz_count_msgs(&a2s, keyed, 1), (unsigned long long)fz_count_msgs(&s2a, keyed, 2), s2a.len);
    fz_tape_t all_a = {0}, all_s = {0}, post_a = {0}, post_s = {0};
    fz_tape_records(&a2s, keyed, 1, 0, &all_a);
    fz_tape_records(&s2a, keyed, 2, 0, &all_s);
    fz_tape_records(&a2s, keyed, 1, a_setup, &post_a);
    fz_tape_records(&s2a, keyed, 2, s_setup, &post_s);
    if (!keyed) {
        seed("standby_handshake", 0, &all_a);
        seed("active_handshake", 1, &all_s);
        seed("standby_own_heap_handshake", 16, &all_a);
        seed("standby_deltas", 2, &post_a);
        seed("active_acks", 3, &post_s);
        seed("standby_raw", 8, &a2s);
        seed("active_raw", 9, &s2a);
        /* the active side with deltas queued between the standby's words */
        for (size_t i = 0; i + 5 <= post_s.len;) {
            uint32_t len = post_s.data[i + 3] | post_s.data[i + 4] << 8;
            post_s.data[i] |= 8;
            i += 5 + len;
        }
        seed("active_acks_with_deltas", 3, &post_s);
    } else {
        seed("keyed_standby_deltas", 4, &post_a);
        seed("keyed_active_acks", 5, &post_s);
        seed("keyed_standby_handshake", 6, &all_a);
        seed("keyed_active_handshake", 7, &all_s);
    }
    free(all_a.data), free(all_s.data), free(post_a.data), free(post_s.data);
    free(a2s.data), free(s2a.data);
    tha_session_destroy(a);
    tha_heap_t *live = tha_session_take_heap(s);
    tha_session_destroy(s);
    tha_heap_destroy(live);
    tha_backlog_destroy(bl);
    tha_heap_destroy(ah);
    tha_schema_release(schema);
}

int main(int argc, char **argv) {
    outdir = argc > 1 ? argv[1] : "fuzz/corpus";
    mkdir(outdir, 0755);
    schemas();
    sessions(0);
    sessions(1);
    return 0;
}

/* fuzz_schema.c — libFuzzer target: tha_schema_deserialize on arbitrary
 * bytes (the SCHEMA message, snapshots and checkpoint files all carry this
 * form).
 *
 * Oracle, when the bytes are accepted: the schema is sealed, compares equal
 * to itself, serializes back to exactly the input (the form is canonical)
 * and deserializes again to an equal schema with the same fingerprint; a
 * heap of bounded capacity can be created with it (or is refused with
 * THA_ESCHEMA because a type is larger than the capacity), an object of
 * every type can be allocated, pointer slots written (the object itself,
 * the tag mask's tagged NULL where the field declares one, a byte of the
 * first extern once bound), described, freed, and the heap snapshotted,
 * the snapshot applied to a second heap and both checked, its pointer
 * types checked and linted (any answer, with a message when it is a
 * refusal). The type check's tables are sorted, inside their types and
 * within their bound. Refusals must come with a message.
 * The whole thing must stay fast and small: a schema may not cost more
 * than THA_SCHEMA_MAX_SLOTS table entries of each kind however few its
 * bytes. */
#include "tha.h"
#include "tha_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_schema oracle: %s: %s\n", what, detail ? detail : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tha_schema_t *s = NULL;
    char msg[256];
    int rc = tha_schema_deserialize(data, size, &s, msg, sizeof msg);
    if (rc) {
        if (s) die("refused but returned a schema", msg);
        if (!msg[0]) die("refused without a message", tha_strerror(rc));
        return 0;
    }
    if (!s || !tha_schema_fingerprint(s)) die("accepted but not sealed", NULL);
    if (s->total_slots > THA_SCHEMA_MAX_SLOTS) die("over the slot limit", NULL);
    uint64_t nplaces = 0, nholes = 0;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        const tha__type_t *t = &s->types[id];
        nplaces += t->nplaces;
        nholes += t->nholes;
        for (uint32_t i = 0; i < t->nplaces; i++)
            if (t->places[i].offset >= t->size ||
                (i && (t->places[i].offset < t->places[i - 1].offset ||
                       (t->places[i].offset == t->places[i - 1].offset &&
                        t->places[i].type <= t->places[i - 1].type))))
                die("places out of order or outside their type", t->name);
        for (uint32_t i = 0; i < t->nholes; i++)
            if (t->holes[i].from >= t->holes[i].to || t->holes[i].to > t->size ||
                (i && t->holes[i].from <= t->holes[i - 1].to))
                die("holes out of order or outside their type", t->name);
    }
    if (nplaces > THA_SCHEMA_MAX_SLOTS || nholes > THA_SCHEMA_MAX_SLOTS)
        die("type check tables over the limit", NULL);
    if (tha_schema_compare(s, s, msg, sizeof msg)) die("not equal to itself", msg);
    size_t len;
    if (tha_schema_serialize(s, NULL, 0, &len) || len != size)
        die("serializes to another length", NULL);
    uint8_t *buf = malloc(len ? len : 1);
    if (tha_schema_serialize(s, buf, len, &len)) die("serialize", tha_schema_errmsg(s));
    if (memcmp(buf, data, size) != 0) die("not canonical: serializes differently", NULL);
    tha_schema_t *again = NULL;
    if (tha_schema_deserialize(buf, len, &again, msg, sizeof msg))
        die("its own serialization is refused", msg);
    if (tha_schema_compare(s, again, msg, sizeof msg) ||
        tha_schema_fingerprint(s) != tha_schema_fingerprint(again))
        die("round trip differs", msg);
    free(buf);

    /* the first extern, bound here when it is small */
    static uint8_t ext_mem[4096];
    const char *ename;
    size_t esize = 0;
    uint8_t *ext = NULL;
    if (tha_schema_extern_count(s) &&
        !tha_schema_extern_info(s, 0, &ename, &esize, NULL) && esize <= sizeof ext_mem) {
        if (tha_schema_bind_extern(s, ename, ext_mem)) die("bind extern", tha_schema_errmsg(s));
        ext = ext_mem + esize - 1;
    }

    /* a bounded heap: 8 MiB */
    tha_heap_t *h = NULL;
    rc = tha_heap_create(&h, s, 8 << 20, THA_TRACK_EXPLICIT);
    if (rc == THA_ESCHEMA) {
        if (s->max_size <= (8u << 20)) die("refused a heap it fits", tha_schema_errmsg(s));
    } else if (rc) {
        die("heap create", tha_strerror(rc));
    } else {
        uint32_t n = tha_schema_type_count(s);
        for (uint32_t id = THA_T_FIRST_USER; id < n; id++) {
            tha_type_info_t ti;
            if (tha_schema_type_info(s, id, &ti)) die("type info", tha_schema_errmsg(s));
            void *p;
            rc = tha_heap_alloc(h, id, 1, &p);
            if (rc == THA_ECAPACITY) continue;
            if (rc) die("alloc", tha_heap_errmsg(h));
            /* every data slot: a tagged NULL where its field has tags, every
             * other one into the extern, the rest at the object itself */
            const tha__type_t *t = tha__schema_type(s, id);
            for (uint32_t k = 0; k < t->nslots; k++) {
                if (t->slots[k].is_func) continue;
                void *v = t->slots[k].tag_mask ? (void *)(uintptr_t)t->slots[k].tag_mask
                          : ext && k % 2 ? (void *)ext : p;
                memcpy((uint8_t *)p + t->slots[k].offset, &v, sizeof v);
            }
            tha_heap_touch(h, p, 0);
            char d[200];
            tha__schema_describe(s, id, ti.size / 2, d, sizeof d);
            if (tha_heap_check(h)) die("check with the object", tha_heap_errmsg(h));
            rc = tha_heap_check_types(h); /* slots declared another type fail */
            if (rc && (rc != THA_EMISMATCH || !tha_heap_errmsg(h)[0]))
                die("type check", tha_heap_errmsg(h));
            size_t nl;
            tha_lint_t lint[2];
            if (tha_heap_lint(h, lint, 2, &nl)) die("lint", tha_heap_errmsg(h));
            size_t fn, fl;
            if (tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &fn)) die("frame size", tha_heap_errmsg(h));
            void *f = malloc(fn);
            if (tha_heap_encode(h, THA_FRAME_SNAPSHOT, f, fn, &fl)) die("snapshot", tha_heap_errmsg(h));
            tha_schema_t *fs = NULL;
            if (tha_frame_schema(f, fl, &fs, msg, sizeof msg)) die("frame schema", msg);
            tha_schema_release(fs);
            tha_heap_t *m = NULL;
            if (tha_heap_create(&m, s, 8 << 20, THA_TRACK_EXPLICIT)) die("mirror", NULL);
            if (tha_heap_apply(m, f, fl)) die("apply the snapshot", tha_heap_errmsg(m));
            if (tha_heap_check(m)) die("check the mirror", tha_heap_errmsg(m));
            tha_heap_destroy(m);
            free(f);
            if (tha_heap_free(h, p)) die("free", tha_heap_errmsg(h));
        }
        if (tha_heap_check(h)) die("check", tha_heap_errmsg(h));
        tha_heap_destroy(h);
    }
    tha_schema_release(again);
    tha_schema_release(s);
    return 0;
}

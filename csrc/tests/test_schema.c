/* test_schema.c — schema registration, sealing, relocation tables,
 * fingerprint, canonical form, compare, introspection and describe. */
#include "check.h"
#include "tha.h"
#include "tha_internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- native structs ----------------------------------------------------- */

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
    char title[16];
    struct emp *head;
    int32_t budget;
    void (*on_change)(void);
};

struct inner {
    uint64_t a;
    void *p;
    void (*cb)(void);
};
struct mid {
    uint32_t tag;
    struct inner in[2];
};
struct outer {
    struct mid m[2];
    char *s;
};

struct address {
    char street[24];
    uint32_t zip;
};
struct person {
    uint32_t id;
    struct address addr;
    uint16_t grid[2][3];
};

struct __attribute__((packed)) pk {
    char c;
    void *p;
};

static void fn_a(void) {}
static void fn_b(void) {}

static int register_emp_dept(tha_schema_t *s, uint32_t *emp_id,
                             uint32_t *dept_id) {
    uint32_t e, d;
    int rc = 0;
    rc |= THA_STRUCT(s, struct emp, "emp", &e);
    rc |= THA_FIELD_SCALAR(s, e, struct emp, name, THA_T_CHAR, 32);
    rc |= THA_FIELD_SCALAR(s, e, struct emp, id, THA_T_U32, 0);
    rc |= THA_FIELD_SCALAR(s, e, struct emp, salary, THA_T_F64, 0);
    rc |= THA_FIELD_PTR(s, e, struct emp, mgr, "emp", 0);
    rc |= THA_FIELD_PTR(s, e, struct emp, dept, "dept", 0); /* late bound */
    rc |= THA_FIELD_PTR(s, e, struct emp, reports, "emp", 4);
    rc |= THA_STRUCT(s, struct dept, "dept", &d);
    rc |= THA_FIELD_SCALAR(s, d, struct dept, title, THA_T_CHAR, 16);
    rc |= THA_FIELD_PTR(s, d, struct dept, head, "struct emp", 0);
    rc |= THA_FIELD_SCALAR(s, d, struct dept, budget, THA_T_I32, 0);
    rc |= THA_FIELD_FUNC(s, d, struct dept, on_change, 0);
    rc |= tha_schema_add_func(s, "fn_a", fn_a);
    rc |= tha_schema_add_func(s, "fn_b", NULL);
    if (emp_id)
        *emp_id = e;
    if (dept_id)
        *dept_id = d;
    return rc;
}

static tha_schema_t *build_emp(void) {
    tha_schema_t *s = NULL;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(register_emp_dept(s, NULL, NULL));
    CHECK_OK(tha_schema_seal(s));
    return s;
}

/* The internals take canonical ids; the tests hold registration handles. */
static const tha__type_t *type_of(const tha_schema_t *s, uint32_t id) {
    return tha__schema_type(s, tha_schema_type_id(s, id));
}
static void describe(const tha_schema_t *s, uint32_t id, uint64_t off,
                     char *buf, size_t cap) {
    tha__schema_describe(s, tha_schema_type_id(s, id), off, buf, cap);
}
static uint32_t id_of(const tha_schema_t *s, const char *name) {
    uint32_t id = 0;
    CHECK_OK(tha_schema_type_by_name(s, name, &id));
    return id;
}

/* ---- tests -------------------------------------------------------------- */

static void test_primitives(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    static const struct {
        const char *name;
        uint32_t id, size;
    } want[] = {{"char", THA_T_CHAR, 1},     {"int8_t", THA_T_I8, 1},
                {"uint8_t", THA_T_U8, 1},    {"int16_t", THA_T_I16, 2},
                {"uint16_t", THA_T_U16, 2},  {"int32_t", THA_T_I32, 4},
                {"uint32_t", THA_T_U32, 4},  {"int64_t", THA_T_I64, 8},
                {"uint64_t", THA_T_U64, 8},  {"float", THA_T_F32, 4},
                {"double", THA_T_F64, 8},    {"bool", THA_T_BOOL, 1},
                {"void", THA_T_VOID, 0},     {"tha_raw", THA_T_RAW, 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        tha_type_info_t ti;
        uint32_t id = 0;
        CHECK_OK(tha_schema_type_by_name(s, want[i].name, &id));
        CHECK(id == want[i].id);
        CHECK_OK(tha_schema_type_info(s, want[i].id, &ti));
        CHECK(strcmp(ti.name, want[i].name) == 0);
        CHECK(ti.size == want[i].size);
        CHECK(ti.is_prim == 1 && ti.nfields == 0 && ti.nslots == 0);
        CHECK(type_of(s, want[i].id) != NULL);
    }
    tha_type_info_t ti;
    CHECK_RC(tha_schema_type_info(s, 0, &ti), THA_ENOTFOUND);
    for (uint32_t id = THA_T_RAW + 1; id < 32; id++) {
        CHECK_RC(tha_schema_type_info(s, id, &ti), THA_ENOTFOUND);
        CHECK(type_of(s, id) == NULL);
    }
    CHECK_RC(tha_schema_type_info(s, 1000, &ti), THA_ENOTFOUND);
    CHECK(tha_schema_type_count(s) == THA_T_RAW + 1);
    CHECK_RC(tha_schema_type_by_name(s, "struct char", NULL), THA_ENOTFOUND);
    CHECK_RC(tha_schema_type_by_name(s, "nope", NULL), THA_ENOTFOUND);
    CHECK(sizeof(bool) == 1);
    char buf[64];
    describe(s, THA_T_U32, 2, buf, sizeof buf);
    CHECK(strcmp(buf, "uint32_t") == 0);
    tha_schema_release(s);
}

static void test_emp_dept(void) {
    tha_schema_t *s;
    uint32_t e, d;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(register_emp_dept(s, &e, &d));
    /* registration handles, in registration order */
    CHECK(e == THA_T_HANDLE && d == THA_T_HANDLE + 1);
    CHECK(tha_schema_type_count(s) == THA_T_FIRST_USER + 2);
    CHECK(tha_schema_fingerprint(s) == 0);
    CHECK_OK(tha_schema_seal(s));
    CHECK_OK(tha_schema_seal(s)); /* idempotent */
    CHECK(tha_schema_fingerprint(s) != 0);
    /* canonical ids: by name, whatever the registration order */
    uint32_t ce = tha_schema_type_id(s, e), cd = tha_schema_type_id(s, d);
    CHECK(cd == THA_T_FIRST_USER && ce == THA_T_FIRST_USER + 1);

    uint32_t id;
    CHECK_OK(tha_schema_type_by_name(s, "emp", &id));
    CHECK(id == ce);
    CHECK_OK(tha_schema_type_by_name(s, "struct emp", &id));
    CHECK(id == ce);
    CHECK_RC(tha_schema_type_by_name(s, "union emp", &id), THA_ENOTFOUND);
    CHECK_OK(tha_schema_type_by_name(s, "struct dept", &id));
    CHECK(id == cd);

    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_info(s, e, &ti));
    CHECK(strcmp(ti.name, "emp") == 0 && ti.id == ce && !ti.is_union &&
          !ti.is_prim && ti.nfields == 6 && ti.size == sizeof(struct emp) &&
          ti.align == _Alignof(struct emp) && ti.nslots == 6);

    const tha__type_t *t = type_of(s, e);
    CHECK(t && t->nslots == 6);
    if (t && t->nslots == 6) {
        uint32_t want[6] = {offsetof(struct emp, mgr), offsetof(struct emp, dept),
                            offsetof(struct emp, reports),
                            offsetof(struct emp, reports) + 8,
                            offsetof(struct emp, reports) + 16,
                            offsetof(struct emp, reports) + 24};
        for (int i = 0; i < 6; i++) {
            CHECK(t->slots[i].offset == want[i]);
            CHECK(t->slots[i].is_func == 0);
        }
    }
    /* resolved targets and sizes */
    CHECK(t && t->fields[4].target_id == cd && t->fields[4].elem_size == 8);
    CHECK(t && t->fields[0].count == 32 && t->fields[0].elem_size == 1);
    CHECK(t && t->fields[5].count == 4);

    const tha__type_t *td = type_of(s, d);
    CHECK(td && td->nslots == 2);
    if (td && td->nslots == 2) {
        CHECK(td->slots[0].offset == offsetof(struct dept, head) &&
              !td->slots[0].is_func);
        CHECK(td->slots[1].offset == offsetof(struct dept, on_change) &&
              td->slots[1].is_func);
        CHECK(td->fields[1].target_id == ce);
    }

    tha_field_t f;
    CHECK_OK(tha_schema_field_info(s, e, 1, &f));
    CHECK(strcmp(f.name, "id") == 0 && f.offset == offsetof(struct emp, id) &&
          f.kind == THA_K_SCALAR && f.prim == THA_T_U32 && f.dims[0] == 0);
    CHECK_OK(tha_schema_field_info(s, e, 5, &f));
    CHECK(strcmp(f.name, "reports") == 0 && f.kind == THA_K_PTR &&
          strcmp(f.target, "emp") == 0 && f.dims[0] == 4);
    CHECK_OK(tha_schema_field_info(s, d, 1, &f));
    CHECK(strcmp(f.target, "emp") == 0); /* "struct emp" canonicalised */
    CHECK_RC(tha_schema_field_info(s, e, 6, &f), THA_ENOTFOUND);
    CHECK_RC(tha_schema_field_info(s, 20, 0, &f), THA_ENOTFOUND);

    /* functions */
    CHECK(tha_schema_func_count(s) == 2);
    const char *fname;
    void (*fn)(void);
    CHECK_OK(tha_schema_func_info(s, 0, &fname, &fn));
    CHECK(strcmp(fname, "fn_a") == 0 && fn == fn_a);
    CHECK_OK(tha_schema_func_info(s, 1, &fname, &fn));
    CHECK(strcmp(fname, "fn_b") == 0 && fn == NULL);
    CHECK_RC(tha_schema_func_info(s, 2, &fname, &fn), THA_ENOTFOUND);
    CHECK(tha__schema_func_id(s, fn_a) == 0);
    CHECK(tha__schema_func_id(s, fn_b) == -1);
    CHECK(tha__schema_func_id(s, NULL) == -1);
    uint64_t fp = tha_schema_fingerprint(s);
    CHECK_OK(tha_schema_bind_func(s, "fn_b", fn_b)); /* after seal: allowed */
    CHECK(tha__schema_func_id(s, fn_b) == 1);
    CHECK(tha_schema_fingerprint(s) == fp);
    CHECK_RC(tha_schema_bind_func(s, "fn_c", fn_b), THA_ENOTFOUND);
    CHECK_CONTAINS(tha_schema_errmsg(s), "fn_c");
    CHECK_RC(tha_schema_bind_func(s, "fn_a", fn_b), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "fn_b");

    /* retain / release */
    CHECK(tha__schema_retain(s) == s);
    tha_schema_release(s);
    CHECK(tha_schema_fingerprint(s) == fp);
    tha_schema_release(s);
    tha_schema_release(NULL);
}

static void test_nested_slots(void) {
    tha_schema_t *s;
    uint32_t in, mid, out;
    CHECK_OK(tha_schema_create(&s));
    /* registered outermost first: targets bind at seal */
    CHECK_OK(THA_STRUCT(s, struct outer, "outer", &out));
    CHECK_OK(THA_FIELD_STRUCT(s, out, struct outer, m, "mid", 2));
    CHECK_OK(THA_FIELD_PTR(s, out, struct outer, s, "char", 0));
    CHECK_OK(THA_STRUCT(s, struct mid, "mid", &mid));
    CHECK_OK(THA_FIELD_SCALAR(s, mid, struct mid, tag, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, mid, struct mid, in, "inner", 2));
    CHECK_OK(THA_STRUCT(s, struct inner, "inner", &in));
    CHECK_OK(THA_FIELD_SCALAR(s, in, struct inner, a, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, in, struct inner, p, "void", 0));
    CHECK_OK(THA_FIELD_FUNC(s, in, struct inner, cb, 0));
    CHECK_OK(tha_schema_seal(s));

    const tha__type_t *ti = type_of(s, in);
    CHECK(ti && ti->nslots == 2 && ti->slots[0].offset == 8 &&
          !ti->slots[0].is_func && ti->slots[1].offset == 16 &&
          ti->slots[1].is_func);
    CHECK(ti && ti->fields[1].target_id == THA_T_VOID);

    const tha__type_t *tm = type_of(s, mid);
    CHECK(tm && tm->nslots == 4);
    if (tm && tm->nslots == 4) {
        size_t b = offsetof(struct mid, in);
        uint32_t want[4] = {b + 8, b + 16, b + 24 + 8, b + 24 + 16};
        for (int i = 0; i < 4; i++) {
            CHECK(tm->slots[i].offset == want[i]);
            CHECK(tm->slots[i].is_func == (uint32_t)(i & 1));
        }
    }
    const tha__type_t *to = type_of(s, out);
    CHECK(to && to->nslots == 9 && to->size == sizeof(struct outer));
    if (to && to->nslots == 9) {
        uint32_t want[9];
        int n = 0;
        for (int mi = 0; mi < 2; mi++)
            for (int ii = 0; ii < 2; ii++) {
                size_t base = offsetof(struct outer, m) + mi * sizeof(struct mid) +
                              offsetof(struct mid, in) + ii * sizeof(struct inner);
                want[n++] = base + offsetof(struct inner, p);
                want[n++] = base + offsetof(struct inner, cb);
            }
        want[n++] = offsetof(struct outer, s);
        for (int i = 0; i < 9; i++)
            CHECK(to->slots[i].offset == want[i]);
        for (uint32_t i = 1; i < to->nslots; i++)
            CHECK(to->slots[i - 1].offset < to->slots[i].offset);
        CHECK(to->fields[0].elem_size == sizeof(struct mid));
        CHECK(to->fields[1].target_id == THA_T_CHAR);
    }
    tha_type_info_t info;
    CHECK_OK(tha_schema_type_info(s, out, &info));
    CHECK(info.nslots == 9);

    char buf[128];
    /* outer.m[1].in[0].cb */
    size_t off = offsetof(struct outer, m) + sizeof(struct mid) +
                 offsetof(struct mid, in) + offsetof(struct inner, cb) + 3;
    describe(s, out, off, buf, sizeof buf);
    CHECK(strcmp(buf, "struct outer field m[1].in[0].cb") == 0);
    describe(s, mid, 5, buf, sizeof buf);
    CHECK(strcmp(buf, "struct mid (padding at 5)") == 0);
    describe(s, out, 4 + sizeof(struct mid), buf, sizeof buf);
    CHECK_CONTAINS(buf, "struct outer field m[1] (padding at 4 of struct mid)");
    tha_schema_release(s);
}

static void test_describe(void) {
    tha_schema_t *s = build_emp();
    char buf[128];
    describe(s, id_of(s, "emp"), offsetof(struct emp, reports) + 16,
                         buf, sizeof buf);
    CHECK(strcmp(buf, "struct emp field reports[2]") == 0);
    describe(s, id_of(s, "emp"), offsetof(struct emp, reports) + 23,
                         buf, sizeof buf);
    CHECK(strcmp(buf, "struct emp field reports[2]") == 0);
    describe(s, id_of(s, "emp"), 3, buf, sizeof buf);
    CHECK(strcmp(buf, "struct emp field name[3]") == 0);
    describe(s, id_of(s, "emp"), offsetof(struct emp, salary), buf,
                         sizeof buf);
    CHECK(strcmp(buf, "struct emp field salary") == 0);
    describe(s, id_of(s, "emp"), 36, buf, sizeof buf);
    CHECK(strcmp(buf, "struct emp (padding at 36)") == 0);
    describe(s, id_of(s, "emp"), 1000, buf, sizeof buf);
    CHECK_CONTAINS(buf, "beyond size");
    tha__schema_describe(s, 99, 0, buf, sizeof buf);
    CHECK_CONTAINS(buf, "99");
    /* tiny buffers are NUL-terminated */
    char small[8];
    describe(s, id_of(s, "emp"), 80, small, sizeof small);
    CHECK(strlen(small) < sizeof small);
    tha_schema_release(s);

    uint32_t a, p;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct person, "person", &p));
    CHECK_OK(THA_FIELD_SCALAR(s, p, struct person, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, p, struct person, addr, "address", 0));
    tha_field_t grid = {.name = "grid", .offset = offsetof(struct person, grid),
                        .kind = THA_K_SCALAR, .prim = THA_T_U16, .dims = {2, 3}};
    CHECK_OK(tha_schema_add_field(s, p, &grid));
    CHECK_OK(THA_STRUCT(s, struct address, "address", &a));
    CHECK_OK(THA_FIELD_SCALAR(s, a, struct address, street, THA_T_CHAR, 24));
    CHECK_OK(THA_FIELD_SCALAR(s, a, struct address, zip, THA_T_U32, 0));
    CHECK_OK(tha_schema_seal(s));
    describe(s, p, offsetof(struct person, addr) + 3, buf, sizeof buf);
    CHECK(strcmp(buf, "struct person field addr.street[3]") == 0);
    describe(s, p, offsetof(struct person, grid[1][2]) + 1, buf,
                         sizeof buf);
    CHECK(strcmp(buf, "struct person field grid[1][2]") == 0);
    const tha__type_t *tp = type_of(s, p);
    CHECK(tp && tp->nslots == 0 && tp->fields[2].count == 6);
    tha_schema_release(s);
}

static void test_bits_union(void) {
    tha_schema_t *s;
    uint32_t id, u;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "flags", 4, 4, 0, &id));
    tha_field_t f = {.name = "a", .offset = 0, .kind = THA_K_BITS,
                     .prim = THA_T_U32, .bits = {0, 3}};
    CHECK_OK(tha_schema_add_field(s, id, &f));
    f.name = "b";
    f.bits[0] = 3;
    f.bits[1] = 29;
    CHECK_OK(tha_schema_add_field(s, id, &f));
    f.name = "c";
    f.bits[0] = 30;
    f.bits[1] = 3;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "bits 30:3");
    f.bits[1] = 0;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_OK(tha_schema_add_struct(s, "num", 8, 8, 1, &u));
    tha_field_t g = {.name = "i", .kind = THA_K_SCALAR, .prim = THA_T_I64};
    CHECK_OK(tha_schema_add_field(s, u, &g));
    g.name = "d";
    g.prim = THA_T_F64;
    CHECK_OK(tha_schema_add_field(s, u, &g));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);  /* field c was refused */
    CHECK_CONTAINS(tha_schema_errmsg(s), "bits 30:3");
    tha_schema_clear_add_error(s);
    CHECK_OK(tha_schema_seal(s));
    uint32_t x;
    CHECK_OK(tha_schema_type_by_name(s, "union num", &x));
    CHECK(x == tha_schema_type_id(s, u));
    CHECK_RC(tha_schema_type_by_name(s, "struct num", &x), THA_ENOTFOUND);
    char buf[64];
    describe(s, u, 4, buf, sizeof buf);
    CHECK(strcmp(buf, "union num field i") == 0);
    describe(s, id, 2, buf, sizeof buf);
    CHECK(strcmp(buf, "struct flags field a") == 0);
    tha_schema_release(s);
}

static void test_fingerprint(void) {
    tha_schema_t *a = build_emp(), *b = build_emp();
    CHECK(tha_schema_fingerprint(a) == tha_schema_fingerprint(b));
    char msg[256];
    CHECK_OK(tha_schema_compare(a, b, msg, sizeof msg));
    CHECK_OK(tha_schema_compare(a, b, NULL, 0));

    /* same but salary moved */
    tha_schema_t *c;
    CHECK_OK(tha_schema_create(&c));
    uint32_t e;
    CHECK_OK(tha_schema_add_struct(c, "emp", sizeof(struct emp), 8, 0, &e));
    tha_field_t f;
    for (uint32_t i = 0; i < 6; i++) {
        CHECK_OK(tha_schema_field_info(a, id_of(a, "emp"), i, &f));
        if (i == 2)
            f.offset = 36;
        CHECK_OK(tha_schema_add_field(c, e, &f));
    }
    uint32_t d;
    CHECK_OK(tha_schema_add_struct(c, "dept", sizeof(struct dept), 8, 0, &d));
    for (uint32_t i = 0; i < 4; i++) {
        CHECK_OK(tha_schema_field_info(a, id_of(a, "dept"), i, &f));
        CHECK_OK(tha_schema_add_field(c, d, &f));
    }
    CHECK_OK(tha_schema_add_func(c, "fn_a", NULL));
    CHECK_OK(tha_schema_add_func(c, "fn_b", NULL));
    CHECK_OK(tha_schema_seal(c));
    CHECK(tha_schema_fingerprint(a) != tha_schema_fingerprint(c));
    CHECK_RC(tha_schema_compare(a, c, msg, sizeof msg), THA_EMISMATCH);
    CHECK_CONTAINS(msg, "struct emp field salary: offset 40 vs 36");
    CHECK_RC(tha_schema_compare(a, c, NULL, 0), THA_EMISMATCH);
    tha_schema_release(a);
    tha_schema_release(b);
    tha_schema_release(c);
}

static void test_serialize_roundtrip(void) {
    tha_schema_t *s = build_emp();
    size_t len = 0;
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &len));
    CHECK(len > 16);
    uint8_t *buf = malloc(len);
    size_t len2 = 0;
    CHECK_RC(tha_schema_serialize(s, buf, len - 1, &len2), THA_ETOOSMALL);
    CHECK(len2 == len);
    CHECK_OK(tha_schema_serialize(s, buf, len, &len2));
    CHECK(len2 == len);
    CHECK(memcmp(buf, "THAS", 4) == 0);
    CHECK(buf[4] == 1 && buf[5] == 0 && buf[8] == 2 && buf[12] == 2);

    tha_schema_t *r = NULL;
    char msg[256];
    CHECK_OK(tha_schema_deserialize(buf, len, &r, msg, sizeof msg));
    CHECK(r != NULL);
    if (r) {
        CHECK(tha_schema_fingerprint(r) == tha_schema_fingerprint(s));
        CHECK_OK(tha_schema_compare(s, r, msg, sizeof msg));
        uint32_t id;
        CHECK_OK(tha_schema_type_by_name(r, "dept", &id));
        CHECK(id == THA_T_FIRST_USER); /* dept < emp */
        const tha__type_t *t = type_of(r, id_of(r, "emp"));
        CHECK(t && t->nslots == 6);
        void (*fn)(void) = fn_a;
        const char *name;
        CHECK_OK(tha_schema_func_info(r, 0, &name, &fn));
        CHECK(fn == NULL && strcmp(name, "fn_a") == 0);
        size_t l3;
        uint8_t *b3 = malloc(len);
        CHECK_OK(tha_schema_serialize(r, b3, len, &l3));
        CHECK(l3 == len && memcmp(b3, buf, len) == 0);
        free(b3);
        tha_schema_release(r);
    }
    /* also the nested schema */
    tha_schema_release(s);
    free(buf);

    /* unsealed */
    CHECK_OK(tha_schema_create(&s));
    CHECK_RC(tha_schema_serialize(s, NULL, 0, &len), THA_ESTATE);
    CHECK_CONTAINS(tha_schema_errmsg(s), "sealed");
    CHECK_OK(tha_schema_seal(s)); /* empty schema */
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &len));
    CHECK(len == 16);
    uint8_t hdr[16];
    CHECK_OK(tha_schema_serialize(s, hdr, sizeof hdr, &len));
    CHECK_OK(tha_schema_deserialize(hdr, sizeof hdr, &r, NULL, 0));
    CHECK_OK(tha_schema_compare(s, r, NULL, 0));
    tha_schema_release(r);
    tha_schema_release(s);
}

static void test_deserialize_errors(void) {
    tha_schema_t *s = build_emp(), *r = (tha_schema_t *)1;
    size_t len;
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &len));
    uint8_t *buf = malloc(len + 1);
    CHECK_OK(tha_schema_serialize(s, buf, len, &len));
    char msg[256];

    CHECK_RC(tha_schema_deserialize(buf, 3, &r, msg, sizeof msg), THA_EFRAME);
    CHECK(r == NULL);
    CHECK_CONTAINS(msg, "truncated");
    CHECK_RC(tha_schema_deserialize(buf, len - 1, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "truncated");
    buf[len] = 0;
    CHECK_RC(tha_schema_deserialize(buf, len + 1, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "trailing");
    buf[0] ^= 1;
    CHECK_RC(tha_schema_deserialize(buf, len, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "magic");
    buf[0] ^= 1;
    buf[4] = 3; /* 1 and 2 (externs, tag masks) exist */
    CHECK_RC(tha_schema_deserialize(buf, len, &r, msg, sizeof msg), THA_EVERSION);
    CHECK_CONTAINS(msg, "version 3");
    buf[4] = 1;
    buf[10] = 0x7f; /* type count */
    CHECK_RC(tha_schema_deserialize(buf, len, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "absurd type count");
    buf[10] = 0;
    buf[14] = 0x7f; /* func count */
    CHECK_RC(tha_schema_deserialize(buf, len, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "absurd function count");
    buf[14] = 0;
    buf[16] = 200; /* first type name length */
    CHECK_RC(tha_schema_deserialize(buf, len, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "bad type name string");
    buf[16] = 4; /* "dept" */
    CHECK_OK(tha_schema_deserialize(buf, len, &r, NULL, 0));
    tha_schema_release(r);
    CHECK_RC(tha_schema_deserialize(NULL, 0, &r, NULL, 0), THA_EFRAME);
    CHECK_RC(tha_schema_deserialize(buf, len, NULL, msg, sizeof msg), THA_EINVAL);

    /* every truncated prefix */
    for (size_t n = 0; n < len; n++) {
        r = NULL;
        int rc = tha_schema_deserialize(buf, n, &r, msg, sizeof msg);
        CHECK(rc != 0 && r == NULL);
        CHECK(msg[0] != 0);
    }
    /* every byte flipped, several ways */
    static const uint8_t xors[] = {0xff, 0x01, 0x80, 0x20};
    int accepted = 0;
    for (size_t x = 0; x < sizeof xors; x++)
        for (size_t i = 0; i < len; i++) {
            /* exact-size copy so ASan catches any overread */
            uint8_t *m = malloc(len);
            memcpy(m, buf, len);
            m[i] ^= xors[x];
            r = NULL;
            int rc = tha_schema_deserialize(m, len, &r, msg, sizeof msg);
            if (rc == 0) {
                accepted++;
                CHECK(r != NULL);
                size_t l2;
                CHECK_OK(tha_schema_serialize(r, NULL, 0, &l2));
                CHECK(l2 == len);
                tha_schema_release(r);
            } else {
                CHECK(r == NULL);
                CHECK(msg[0] != 0);
            }
            free(m);
        }
    CHECK(accepted > 0); /* e.g. a renamed field still parses */
    /* pseudo-random multi-byte corruption */
    uint32_t seed = 12345;
    for (int it = 0; it < 3000; it++) {
        uint8_t *m = malloc(len);
        memcpy(m, buf, len);
        for (int k = 0; k < 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t i = (seed >> 8) % len;
            seed = seed * 1103515245u + 12345u;
            m[i] = (uint8_t)(seed >> 16);
        }
        r = NULL;
        if (tha_schema_deserialize(m, len, &r, msg, sizeof msg) == 0)
            tha_schema_release(r);
        free(m);
    }
    free(buf);
    tha_schema_release(s);
}

static void test_deserialize_seal_failure(void) {
    /* a blob whose struct points at a type it never defines fails in seal */
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "a", 8, 8, 0, &id));
    tha_field_t f = {.name = "p", .kind = THA_K_PTR, .target = "zzz"};
    CHECK_OK(tha_schema_add_field(s, id, &f));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "zzz");
    CHECK_OK(tha_schema_add_struct(s, "zzz", 8, 8, 0, NULL));
    CHECK_OK(tha_schema_seal(s)); /* retry after registering it */
    size_t len;
    uint8_t buf[256];
    CHECK_OK(tha_schema_serialize(s, buf, sizeof buf, &len));
    /* rename "zzz" (the second type) to "zzy": the pointer dangles */
    uint8_t *z = NULL;
    for (size_t i = len - 3; i > 0; i--)
        if (memcmp(buf + i, "zzz", 3) == 0 && buf[i - 2] == 3) {
            z = buf + i;
            break;
        }
    CHECK(z != NULL);
    if (z) {
        z[2] = 'y';
        char msg[256];
        tha_schema_t *r = NULL;
        int rc = tha_schema_deserialize(buf, len, &r, msg, sizeof msg);
        CHECK(rc == THA_ESCHEMA);
        CHECK(r == NULL);
        CHECK_CONTAINS(msg, "struct a field p: pointer to unregistered type 'zzz'");
    }
    tha_schema_release(s);
}

static void test_struct_errors(void) {
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "emp", 16, 8, 0, &id));
    CHECK_RC(tha_schema_add_struct(s, "emp", 16, 8, 0, NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "emp");
    CHECK_RC(tha_schema_add_struct(s, "uint32_t", 4, 4, 0, NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "uint32_t");
    CHECK_RC(tha_schema_add_struct(s, "", 16, 8, 0, NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "empty");
    CHECK_RC(tha_schema_add_struct(s, NULL, 16, 8, 0, NULL), THA_EINVAL);
    char longname[THA_NAME_MAX + 1];
    memset(longname, 'x', THA_NAME_MAX);
    longname[THA_NAME_MAX] = 0;
    CHECK_RC(tha_schema_add_struct(s, longname, 16, 8, 0, NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "too long");
    longname[THA_NAME_MAX - 1] = 0; /* 63 chars: fine */
    CHECK_OK(tha_schema_add_struct(s, longname, 16, 8, 0, NULL));
    CHECK_RC(tha_schema_add_struct(s, "a b", 16, 8, 0, NULL), THA_EINVAL);
    CHECK_RC(tha_schema_add_struct(s, "z", 0, 8, 0, NULL), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct z: size 0");
    CHECK_RC(tha_schema_add_struct(s, "z", 12, 3, 0, NULL), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "power of two");
    CHECK_RC(tha_schema_add_struct(s, "z", 12, 0, 0, NULL), THA_ESCHEMA);
    CHECK_RC(tha_schema_add_struct(s, "X", 32, 16, 0, NULL), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s),
                   "struct X: alignment 16 exceeds the heap's 8-byte alignment");
    CHECK_RC(tha_schema_add_struct(s, "U", 32, 16, 1, NULL), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "union U: alignment 16");
    CHECK_RC(tha_schema_add_struct(s, "z", 12, 8, 0, NULL), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "multiple");

    /* fields */
    tha_field_t f = {.name = "x", .offset = 0, .kind = 9};
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct emp field x: invalid kind 9");
    CHECK_RC(tha_schema_add_field(s, id, NULL), THA_EINVAL);
    f.kind = THA_K_SCALAR;
    f.prim = THA_T_VOID;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct emp field x: prim 13");
    f.prim = 0;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    f.prim = 40;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    f.kind = THA_K_BITS;
    f.prim = THA_T_VOID;
    f.bits[1] = 1;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    f.kind = THA_K_PTR;
    f.prim = 0;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct emp field x: pointer field needs a target");
    f.target = "";
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    f.kind = THA_K_STRUCT;
    f.target = NULL;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "needs a target");
    f.kind = THA_K_SCALAR;
    f.prim = THA_T_U64;
    f.name = "";
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    f.name = longname;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_OK); /* 63 chars fine */
    f.name = "x";
    f.offset = 12; /* 12 + 8 > 16 */
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct emp field x: offset 12 + 8 bytes exceeds size 16");
    f.offset = 8;
    CHECK_OK(tha_schema_add_field(s, id, &f));
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "duplicate field 'x'");
    f.name = "arr";
    f.offset = 0;
    f.prim = THA_T_U8;
    f.dims[0] = 65536;
    f.dims[1] = 65536;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "dims overflow");
    f.dims[0] = 65536;
    f.dims[1] = 65535;
    f.prim = THA_T_U64; /* count fits, bytes do not */
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "dims overflow");
    f.dims[0] = 0;
    f.dims[1] = 2;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "0-terminated");
    memset(f.dims, 0, sizeof f.dims);
    f.kind = THA_K_STRUCT;
    f.target = "big";
    f.offset = 16; /* outside */
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_ESCHEMA);
    char longsig[200];
    memset(longsig, 'a', sizeof longsig - 1);
    longsig[sizeof longsig - 1] = 0;
    tha_field_t fn = {.name = "cb", .kind = THA_K_FUNC, .sig = longsig};
    CHECK_RC(tha_schema_add_field(s, id, &fn), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "signature");
    CHECK_RC(tha_schema_add_field(s, 5, &fn), THA_EINVAL); /* a primitive */
    CHECK_RC(tha_schema_add_field(s, 20, &fn), THA_ENOTFOUND);
    CHECK_RC(tha_schema_add_field(s, 500, &fn), THA_ENOTFOUND);

    /* functions */
    CHECK_OK(tha_schema_add_func(s, "f1", fn_a));
    CHECK_RC(tha_schema_add_func(s, "f1", NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "f1");
    CHECK_RC(tha_schema_add_func(s, "f2", fn_a), THA_EINVAL);
    CHECK_RC(tha_schema_add_func(s, "", NULL), THA_EINVAL);

    /* the failed adds above are remembered: the first one is quoted */
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "an earlier add failed");
    CHECK_CONTAINS(tha_schema_errmsg(s), "emp");
    tha_schema_clear_add_error(s); /* this test meant them */
    CHECK_OK(tha_schema_seal(s));
    CHECK_RC(tha_schema_add_struct(s, "late", 8, 8, 0, NULL), THA_ESTATE);
    CHECK_CONTAINS(tha_schema_errmsg(s), "sealed");
    f.kind = THA_K_SCALAR;
    f.name = "late";
    f.offset = 0;
    CHECK_RC(tha_schema_add_field(s, id, &f), THA_ESTATE);
    CHECK_RC(tha_schema_add_func(s, "f9", NULL), THA_ESTATE);
    CHECK_OK(tha_schema_bind_func(s, "f1", fn_b));
    CHECK(tha__schema_func_id(s, fn_b) == 0 && tha__schema_func_id(s, fn_a) == -1);
    tha_schema_release(s);
}

/* One failing seal: returns the message. */
static void seal_fails(tha_schema_t *s, const char *want) {
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), want);
    CHECK(tha_schema_fingerprint(s) == 0);
    tha_schema_release(s);
}

static void test_seal_errors(void) {
    tha_schema_t *s;
    uint32_t a, b, u, x;

    /* unregistered pointer target */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "emp", 16, 8, 0, &a));
    tha_field_t f = {.name = "boss", .offset = 8, .kind = THA_K_PTR, .target = "foo"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    seal_fails(s, "struct emp field boss: pointer to unregistered type 'foo'");

    /* unregistered nested target */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "emp", 16, 8, 0, &a));
    f = (tha_field_t){.name = "inner", .kind = THA_K_STRUCT, .target = "foo"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    seal_fails(s, "struct emp field inner: contains unregistered type 'foo'");

    /* nested primitive */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "emp", 16, 8, 0, &a));
    f = (tha_field_t){.name = "n", .kind = THA_K_STRUCT, .target = "uint32_t"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    seal_fails(s, "struct emp field n: 'uint32_t' is a primitive");

    /* self by value */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "a", 16, 8, 0, &a));
    f = (tha_field_t){.name = "b", .kind = THA_K_STRUCT, .target = "a"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    seal_fails(s, "struct a field b: contains struct a by value");

    /* a -> b -> a by value */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "a", 16, 8, 0, &a));
    CHECK_OK(tha_schema_add_struct(s, "b", 16, 8, 0, &b));
    f = (tha_field_t){.name = "x", .kind = THA_K_STRUCT, .target = "b"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    f = (tha_field_t){.name = "y", .kind = THA_K_STRUCT, .target = "a"};
    CHECK_OK(tha_schema_add_field(s, b, &f));
    seal_fails(s, "struct b field y: contains struct a by value");

    /* packed pointer, using the real packed struct */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct pk, "x", &x));
    CHECK_OK(THA_FIELD_SCALAR(s, x, struct pk, c, THA_T_CHAR, 0));
    tha_field_t pf = {.name = "p", .offset = offsetof(struct pk, p),
                      .kind = THA_K_PTR, .target = "void"};
    /* sizeof(struct pk) == 9, align 1 */
    CHECK_OK(tha_schema_add_field(s, x, &pf));
    seal_fails(s, "struct x field p: pointer at offset 1 is not 8-byte aligned (packed struct?)");

    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "x", 16, 8, 0, &x));
    pf.offset = 3;
    CHECK_OK(tha_schema_add_field(s, x, &pf));
    seal_fails(s, "struct x field p: pointer at offset 3 is not 8-byte aligned (packed struct?)");

    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "x", 16, 8, 0, &x));
    tha_field_t ff = {.name = "cb", .offset = 4, .kind = THA_K_FUNC};
    CHECK_OK(tha_schema_add_field(s, x, &ff));
    seal_fails(s, "struct x field cb: function pointer at offset 4 is not 8-byte aligned");

    /* union holding a pointer */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "u", 8, 8, 1, &u));
    f = (tha_field_t){.name = "i", .kind = THA_K_SCALAR, .prim = THA_T_I64};
    CHECK_OK(tha_schema_add_field(s, u, &f));
    f = (tha_field_t){.name = "p", .kind = THA_K_PTR, .target = "char"};
    CHECK_OK(tha_schema_add_field(s, u, &f));
    seal_fails(s, "union u field p: unions holding pointers cannot be mirrored");

    /* union holding a function pointer */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "u", 8, 8, 1, &u));
    f = (tha_field_t){.name = "cb", .kind = THA_K_FUNC};
    CHECK_OK(tha_schema_add_field(s, u, &f));
    seal_fails(s, "union u field cb: unions holding pointers cannot be mirrored");

    /* union holding a struct holding a pointer (two levels down) */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "u", 32, 8, 1, &u));
    f = (tha_field_t){.name = "s", .kind = THA_K_STRUCT, .target = "outer2"};
    CHECK_OK(tha_schema_add_field(s, u, &f));
    CHECK_OK(tha_schema_add_struct(s, "outer2", 32, 8, 0, &a));
    f = (tha_field_t){.name = "in", .offset = 8, .kind = THA_K_STRUCT,
                      .target = "leaf", .dims = {3}};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    CHECK_OK(tha_schema_add_struct(s, "leaf", 8, 8, 0, &b));
    f = (tha_field_t){.name = "p", .kind = THA_K_PTR, .target = "leaf"};
    CHECK_OK(tha_schema_add_field(s, b, &f));
    seal_fails(s, "union u field s: unions holding pointers cannot be mirrored");

    /* pointer-free union inside a struct is fine */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "u", 8, 8, 1, &u));
    f = (tha_field_t){.name = "i", .kind = THA_K_SCALAR, .prim = THA_T_I64};
    CHECK_OK(tha_schema_add_field(s, u, &f));
    CHECK_OK(tha_schema_add_struct(s, "holder", 16, 8, 0, &a));
    f = (tha_field_t){.name = "v", .kind = THA_K_STRUCT, .target = "union u"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    f = (tha_field_t){.name = "p", .offset = 8, .kind = THA_K_PTR, .target = "u"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    CHECK_OK(tha_schema_seal(s));
    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_info(s, a, &ti));
    CHECK(ti.nslots == 1);
    tha_schema_release(s);

    /* nested struct overflowing its container: checked at seal */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "small", 16, 8, 0, &a));
    f = (tha_field_t){.name = "big", .offset = 8, .kind = THA_K_STRUCT, .target = "big"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    CHECK_OK(tha_schema_add_struct(s, "big", 64, 8, 0, &b));
    seal_fails(s, "struct small field big: offset 8 + 64 bytes exceeds size 16");

    /* overlapping pointer slots */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "o", 16, 8, 0, &a));
    f = (tha_field_t){.name = "p", .kind = THA_K_PTR, .target = "o"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    f = (tha_field_t){.name = "q", .kind = THA_K_PTR, .target = "o"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    seal_fails(s, "struct o: pointer slots at offsets 0 and 0 overlap");

    /* a struct referenced but never added gets no id */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "a", 8, 8, 0, &a));
    f = (tha_field_t){.name = "p", .kind = THA_K_PTR, .target = "ghost"};
    CHECK_OK(tha_schema_add_field(s, a, &f));
    CHECK(tha_schema_type_count(s) == THA_T_FIRST_USER + 1);
    CHECK_RC(tha_schema_type_by_name(s, "ghost", NULL), THA_ENOTFOUND);
    seal_fails(s, "'ghost'");
}

static tha_schema_t *one_struct(const char *name, int is_union, size_t size,
                                const tha_field_t *fields, int n,
                                const char *func) {
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, name, size, 8, is_union, &id));
    for (int i = 0; i < n; i++)
        CHECK_OK(tha_schema_add_field(s, id, &fields[i]));
    if (func)
        CHECK_OK(tha_schema_add_func(s, func, NULL));
    CHECK_OK(tha_schema_add_struct(s, "other", 8, 8, 0, NULL));
    CHECK_OK(tha_schema_seal(s));
    return s;
}

static void expect_diff(tha_schema_t *a, tha_schema_t *b, const char *want) {
    char msg[256];
    CHECK(tha_schema_fingerprint(a) != tha_schema_fingerprint(b));
    CHECK_RC(tha_schema_compare(a, b, msg, sizeof msg), THA_EMISMATCH);
    CHECK_CONTAINS(msg, want);
    tha_schema_release(a);
    tha_schema_release(b);
}

static void test_compare(void) {
    const tha_field_t base[3] = {
        {.name = "id", .offset = 0, .kind = THA_K_SCALAR, .prim = THA_T_U32},
        {.name = "salary", .offset = 8, .kind = THA_K_SCALAR, .prim = THA_T_F64},
        {.name = "boss", .offset = 16, .kind = THA_K_PTR, .target = "emp"},
    };
    tha_field_t v[3];
#define BASE() one_struct("emp", 0, 32, base, 3, "on_tick")
#define VAR() one_struct("emp", 0, 32, v, 3, "on_tick")

    memcpy(v, base, sizeof v);
    v[1].offset = 16;
    v[2].offset = 24;
    expect_diff(BASE(), VAR(), "struct emp field salary: offset 8 vs 16");

    expect_diff(BASE(), one_struct("emp", 0, 40, base, 3, "on_tick"),
                "struct emp: size 32 vs 40");
    memcpy(v, base, sizeof v);
    v[1].name = "wage";
    expect_diff(BASE(), VAR(), "struct emp: field 1 is 'salary' vs 'wage'");
    expect_diff(BASE(), one_struct("emp", 0, 32, base, 2, "on_tick"),
                "struct emp: 3 fields vs 2");
    expect_diff(BASE(), one_struct("dept", 0, 32, base, 2, "on_tick"),
                "type 32: struct emp vs struct dept");
    expect_diff(one_struct("u", 1, 8, base, 1, NULL),
                one_struct("u", 0, 8, base, 1, NULL), "type 33: union u vs struct u"); /* other < u */
    expect_diff(BASE(), one_struct("emp", 0, 32, base, 3, "on_tock"),
                "function 0: 'on_tick' vs 'on_tock'");
    expect_diff(BASE(), one_struct("emp", 0, 32, base, 3, NULL),
                "only one side has function 0 'on_tick'");
    memcpy(v, base, sizeof v);
    v[2].kind = THA_K_SCALAR;
    v[2].prim = THA_T_U64;
    v[2].target = NULL;
    expect_diff(BASE(), VAR(), "struct emp field boss: field kind pointer vs scalar");
    memcpy(v, base, sizeof v);
    v[2].target = "other";
    expect_diff(BASE(), VAR(), "struct emp field boss: target 'emp' vs 'other'");
    memcpy(v, base, sizeof v);
    v[0].prim = THA_T_I32;
    expect_diff(BASE(), VAR(), "struct emp field id: prim uint32_t vs int32_t");
    memcpy(v, base, sizeof v);
    v[2].dims[0] = 2;
    expect_diff(BASE(), VAR(), "struct emp field boss: dims none vs [2]");

    /* only one side has a type */
    tha_schema_t *a = BASE(), *b;
    CHECK_OK(tha_schema_create(&b));
    uint32_t id;
    CHECK_OK(tha_schema_add_struct(b, "emp", 32, 8, 0, &id));
    for (int i = 0; i < 3; i++)
        CHECK_OK(tha_schema_add_field(b, id, &base[i]));
    CHECK_OK(tha_schema_add_func(b, "on_tick", NULL));
    CHECK_OK(tha_schema_seal(b));
    expect_diff(a, b, "only one side has struct other");

    /* function signatures */
    tha_field_t fa = {.name = "cb", .kind = THA_K_FUNC, .sig = "int(*)(int)"};
    tha_field_t fb = {.name = "cb", .kind = THA_K_FUNC};
    tha_field_t fc = {.name = "cb", .kind = THA_K_FUNC, .sig = "void(*)(void)"};
    a = one_struct("h", 0, 8, &fb, 1, NULL);
    b = one_struct("h", 0, 8, &fc, 1, NULL);
    char msg[128];
    CHECK_OK(tha_schema_compare(a, b, msg, sizeof msg)); /* NULL == void(*)(void) */
    tha_schema_release(b);
    expect_diff(a, one_struct("h", 0, 8, &fa, 1, NULL),
                "struct h field cb: signature 'void(*)(void)' vs 'int(*)(int)'");
    tha_field_t ba = {.name = "f", .kind = THA_K_BITS, .prim = THA_T_U8, .bits = {1, 2}};
    tha_field_t bb = {.name = "f", .kind = THA_K_BITS, .prim = THA_T_U8, .bits = {1, 3}};
    expect_diff(one_struct("h", 0, 8, &ba, 1, NULL),
                one_struct("h", 0, 8, &bb, 1, NULL), "struct h field f: bits 1:2 vs 1:3");

    /* the message buffer may be tiny */
    memcpy(v, base, sizeof v);
    v[1].offset = 16;
    v[2].offset = 24;
    a = BASE();
    b = VAR();
    char tiny[5];
    CHECK_RC(tha_schema_compare(a, b, tiny, sizeof tiny), THA_EMISMATCH);
    CHECK(strlen(tiny) == 4);
    tha_schema_release(a);
    tha_schema_release(b);
#undef BASE
#undef VAR
}

/* Many types, each pointing at the next by name and nesting the previous. */
static void test_many_types(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    enum { N = 3000 };
    for (int i = 0; i < N; i++) {
        char name[32], next[32], prev[32];
        snprintf(name, sizeof name, "t%d", i);
        snprintf(next, sizeof next, "t%d", (i + 1) % N);
        snprintf(prev, sizeof prev, "t%d", i - 1);
        uint32_t id;
        CHECK_OK(tha_schema_add_struct(s, name, i ? 16 : 8, 8, 0, &id));
        CHECK(id == THA_T_HANDLE + (uint32_t)i);
        tha_field_t f = {.name = "next", .kind = THA_K_PTR, .target = next};
        CHECK_OK(tha_schema_add_field(s, id, &f));
        if (i) {
            tha_field_t g = {.name = "prev", .offset = 8, .kind = THA_K_SCALAR,
                             .prim = THA_T_U64};
            CHECK_OK(tha_schema_add_field(s, id, &g));
        }
    }
    CHECK_OK(tha_schema_seal(s));
    CHECK(tha_schema_type_count(s) == THA_T_FIRST_USER + N);
    size_t len;
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &len));
    void *buf = malloc(len);
    CHECK_OK(tha_schema_serialize(s, buf, len, &len));
    tha_schema_t *r = NULL;
    CHECK_OK(tha_schema_deserialize(buf, len, &r, NULL, 0));
    CHECK_OK(tha_schema_compare(s, r, NULL, 0));
    tha_schema_release(r);
    free(buf);
    tha_schema_release(s);
}

/* A nested struct that ends in a hole, then more uncovered bytes: one
 * hole in the type-check table, not two touching ones (found by
 * fuzz_schema: the oracle wants holes sorted and apart). */
static void test_holes_merge_across_nested_end(void) {
    tha_schema_t *s;
    uint32_t in, out;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "in", 16, 8, 0, &in));
    CHECK_OK(tha_schema_add_field(s, in, &(tha_field_t){.name = "p", .kind = THA_K_PTR,
                                                         .target = "in"}));
    CHECK_OK(tha_schema_add_struct(s, "out", 40, 8, 0, &out));
    CHECK_OK(tha_schema_add_field(s, out, &(tha_field_t){.name = "a", .kind = THA_K_STRUCT,
                                                          .target = "in"}));
    CHECK_OK(tha_schema_seal(s));
    const tha__type_t *t = tha__schema_type(s, tha_schema_type_id(s, out));
    CHECK(t && t->nholes == 1);
    if (t && t->nholes == 1) CHECK(t->holes[0].from == 8 && t->holes[0].to == 40);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_holes_merge_across_nested_end);
    RUN(test_primitives);
    RUN(test_emp_dept);
    RUN(test_nested_slots);
    RUN(test_describe);
    RUN(test_bits_union);
    RUN(test_fingerprint);
    RUN(test_serialize_roundtrip);
    RUN(test_deserialize_errors);
    RUN(test_deserialize_seal_failure);
    RUN(test_struct_errors);
    RUN(test_seal_errors);
    RUN(test_compare);
    RUN(test_many_types);
    return CHECK_DONE();
}

/* org.h — what the network examples active.c and standby.c share: the org
 * chart structs and their registration (TRY and the HMAC: netauth.h).
 *
 * The layout is the one tests/test_replication.py declares in Python, so
 * a C node and a Python node mirror the same heap. Registration order does
 * not matter: sealing puts the schema in canonical order (and gives the
 * canonical ids), so any order gives the fingerprint Python computes.
 */
#ifndef ORG_H
#define ORG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netauth.h"

struct dept {
    char name[32];
    uint32_t id;
};
struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct dept *dept;
    struct emp *reports[4];
};

#define NSTAFF 50

static uint32_t EMP, DEPT;

static tha_schema_t *org_schema(void) {
    tha_schema_t *s;
    TRY(tha_schema_create(&s));
    TRY(THA_STRUCT(s, struct emp, "emp", &EMP));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    TRY(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    TRY(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    TRY(THA_FIELD_PTR(s, EMP, struct emp, dept, "dept", 0));
    TRY(THA_FIELD_PTR(s, EMP, struct emp, reports, "emp", 4));
    TRY(THA_STRUCT(s, struct dept, "dept", &DEPT));
    TRY(THA_FIELD_SCALAR(s, DEPT, struct dept, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_SCALAR(s, DEPT, struct dept, id, THA_T_U32, 0));
    TRY(tha_schema_seal(s));
    /* EMP and DEPT are registration handles; they keep working, but the
     * ids heaps report are the canonical ones */
    EMP = tha_schema_type_id(s, EMP);
    DEPT = tha_schema_type_id(s, DEPT);
    return s;
}

#endif

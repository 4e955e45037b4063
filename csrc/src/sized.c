/* sized.c — size rules: the type an allocation gets when its caller gives
 * only a size (tha_heap_alloc_sized, for malloc-shaped hooks such as
 * uthash_malloc). The rules are the heap handle's, outside the region:
 * they say how this program's code allocates, so they travel with no
 * frame (see tha.h). The allocation itself is tha_heap_alloc's.
 */
#include "heap.h"

#include <stdio.h>
#include <stdlib.h>

/* The allocatable type id names (a registration handle is mapped to its
 * canonical id); NULL, with the detail in h->err, if there is none. */
static const tha__type_t *rule_type(tha_heap_t *h, uint32_t given, const char *call) {
    const tha__type_t *t = tha__schema_type(h->schema, tha_schema_type_id(h->schema, given));
    if (!t || t->size == 0)
        tha__hfail(h, THA_EINVAL, "%s: type id %u cannot be allocated%s", call, given,
                   t ? " (void has no size)" : "");
    return t && t->size ? t : NULL;
}

static const tha__type_t *type_of(const tha_heap_t *h, const tha__size_rule_t *r) {
    return tha__schema_type(h->schema, r->type);
}

static int add_rule(tha_heap_t *h, uint64_t size, uint32_t type) {
    if (h->nsize_rules == h->size_rules_cap) {
        uint32_t cap = h->size_rules_cap ? 2 * h->size_rules_cap : 8;
        tha__size_rule_t *r = realloc(h->size_rules, cap * sizeof *r);
        if (!r) return tha__hfail(h, THA_ENOMEM, "size rule: out of memory");
        h->size_rules = r;
        h->size_rules_cap = cap;
    }
    h->size_rules[h->nsize_rules++] = (tha__size_rule_t){.size = size, .type = type};
    return 0;
}

int tha_heap_size_type(tha_heap_t *h, size_t size, uint32_t type_id) {
    if (!h) return THA_EINVAL;
    const tha__type_t *t = rule_type(h, type_id, "size_type");
    if (!t) return THA_EINVAL;
    if (size == 0 || size % t->size)
        return tha__hfail(h, THA_EINVAL, "size_type: %zu bytes are not a multiple of %s "
                          "(%llu bytes)", size, t->name, (unsigned long long)t->size);
    for (uint32_t i = 0; i < h->nsize_rules; i++) {
        const tha__size_rule_t *r = &h->size_rules[i];
        if (r->size != size) continue;
        if (r->type == t->id) return 0;
        return tha__hfail(h, THA_ESTATE, "size_type: %zu bytes are %s already; one size "
                          "has one type", size, type_of(h, r)->name);
    }
    return add_rule(h, size, t->id);
}

int tha_heap_size_multiple(tha_heap_t *h, uint32_t type_id) {
    if (!h) return THA_EINVAL;
    const tha__type_t *t = rule_type(h, type_id, "size_multiple");
    if (!t) return THA_EINVAL;
    for (uint32_t i = 0; i < h->nsize_rules; i++)
        if (h->size_rules[i].size == 0 && h->size_rules[i].type == t->id) return 0;
    return add_rule(h, 0, t->id);
}

/* "64 -> head, n x 16 -> cell" (truncated to cap), for refusals. */
static void describe_rules(const tha_heap_t *h, char *buf, size_t cap) {
    size_t at = 0;
    buf[0] = '\0';
    if (h->nsize_rules == 0) snprintf(buf, cap, "none");
    for (uint32_t i = 0; i < h->nsize_rules && at < cap; i++) {
        const tha__size_rule_t *r = &h->size_rules[i];
        const tha__type_t *t = type_of(h, r);
        int n = r->size ? snprintf(buf + at, cap - at, "%s%llu -> %s", i ? ", " : "",
                                   (unsigned long long)r->size, t->name)
                        : snprintf(buf + at, cap - at, "%sn x %llu -> %s", i ? ", " : "",
                                   (unsigned long long)t->size, t->name);
        if (n < 0) break;
        at += (size_t)n;
    }
    if (at >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
}

int tha_heap_alloc_sized(tha_heap_t *h, size_t size, void **out) {
    if (!h || !out) return THA_EINVAL;
    *out = NULL;
    if (size == 0) return tha__hfail(h, THA_EINVAL, "alloc_sized: size 0");
    /* an exact rule first; else the multiple rules that divide size */
    const tha__type_t *pick = NULL, *also = NULL;
    for (uint32_t i = 0; i < h->nsize_rules && !pick; i++)
        if (h->size_rules[i].size == size) pick = type_of(h, &h->size_rules[i]);
    bool exact = pick != NULL;
    for (uint32_t i = 0; i < h->nsize_rules && !exact && !also; i++) {
        const tha__type_t *t = type_of(h, &h->size_rules[i]);
        if (h->size_rules[i].size || size % t->size) continue;
        if (pick) also = t;
        else pick = t;
    }
    char rules[128];
    if (!pick) {
        describe_rules(h, rules, sizeof rules);
        return tha__hfail(h, THA_ESCHEMA, "alloc_sized of %zu bytes: no size rule covers "
                          "it (rules: %s); register one with tha_heap_size_type(h, %zu, "
                          "type) or tha_heap_size_multiple(h, type)", size, rules, size);
    }
    if (also)
        return tha__hfail(h, THA_ESCHEMA, "alloc_sized of %zu bytes: ambiguous, a multiple "
                          "of both %s (%llu bytes) and %s (%llu bytes); say which with "
                          "tha_heap_size_type(h, %zu, type)", size, pick->name,
                          (unsigned long long)pick->size, also->name,
                          (unsigned long long)also->size, size);
    uint64_t count = size / pick->size;
    if (count > UINT32_MAX)
        return tha__hfail(h, THA_ECAPACITY, "alloc_sized of %zu bytes: %llu x %s, more "
                          "elements than one allocation holds (%u)", size,
                          (unsigned long long)count, pick->name, UINT32_MAX);
    return tha_heap_alloc(h, pick->id, (uint32_t)count, out);
}

/* seed.c — the seed demo's state and operations, scripted, on a tha heap.
 *
 *   seed                                   mirror to a second heap in this process
 *   seed HOST PORT [HOST2 PORT2]           mirror to a standby over TCP (any tha
 *                                          standby: `python -m tha standby`, a
 *                                          tha.Standby, examples/c/standby.c);
 *                                          HOST2 PORT2: the clean standby the
 *                                          script moves to part-way
 *
 * The state is what pointer-rich C programs hold, written the way a C
 * programmer writes it, with no tha call in the data structure code except
 * alloc and free: two singly linked lists whose heads are globals, a
 * binary search tree with parent links, and a manager <-> engineer cycle
 * whose titles are char * strings. Tracking is "auto": plain writes are
 * found, nobody calls touch. The global heads are bound as roots by
 * reference (tha_root_bind), so swapping them ("exchange lists") needs no
 * tha call at all.
 *
 * The script: build; bulk sync; add and remove list nodes; add tree nodes;
 * traversals and a lowest common ancestor; count what the next sync
 * carries; incremental sync; remove half the nodes; exchange the lists;
 * clean standby (a new, empty one, filled by bulk sync); a leak (a list cut
 * without freeing its tail), the leak report and the collection; checkpoint
 * and load. After each sync the mirror is walked (in this process) or the
 * state line is printed for the standby's side to compare with ("state:").
 * Exit status 0 only if every mirror matched.
 *
 * THA_SECRET=... authenticates the TCP link (see netauth.h).
 */
#include <stdarg.h>
#include <unistd.h>

#include "netauth.h"

struct node {
    int32_t value;
    struct node *next;
};
struct tnode {
    int32_t key;
    struct tnode *left, *right, *parent;
};
struct person {
    char name[32];
    char *title;
    struct person *manager;
    struct person *engineer;
};

/* The program's globals: what it would have without tha. */
static struct node *list1, *list2;
static struct tnode *tree;
static struct person *boss;
static tha_heap_t *heap;
static uint32_t NODE, TNODE, PERSON;
static int failures;

static tha_schema_t *seed_schema(void) {
    tha_schema_t *s;
    TRY(tha_schema_create(&s));
    TRY(THA_STRUCT(s, struct node, "node", &NODE));
    TRY(THA_FIELD_SCALAR(s, NODE, struct node, value, THA_T_I32, 0));
    TRY(THA_FIELD_PTR(s, NODE, struct node, next, "node", 0));
    TRY(THA_STRUCT(s, struct tnode, "tnode", &TNODE));
    TRY(THA_FIELD_SCALAR(s, TNODE, struct tnode, key, THA_T_I32, 0));
    TRY(THA_FIELD_PTR(s, TNODE, struct tnode, left, "tnode", 0));
    TRY(THA_FIELD_PTR(s, TNODE, struct tnode, right, "tnode", 0));
    TRY(THA_FIELD_PTR(s, TNODE, struct tnode, parent, "tnode", 0));
    TRY(THA_STRUCT(s, struct person, "person", &PERSON));
    TRY(THA_FIELD_SCALAR(s, PERSON, struct person, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_PTR(s, PERSON, struct person, title, "char", 0));
    TRY(THA_FIELD_PTR(s, PERSON, struct person, manager, "person", 0));
    TRY(THA_FIELD_PTR(s, PERSON, struct person, engineer, "person", 0));
    TRY(tha_schema_seal(s));
    return s;
}

/* ---- the data structures: plain C, allocation from the heap ------------ */

static void *alloc(uint32_t type, uint32_t count) {
    void *p;
    TRY(tha_heap_alloc(heap, type, count, &p));
    return p;
}

static void list_push(struct node **head, int32_t value) {
    struct node *n = alloc(NODE, 1);
    n->value = value;
    n->next = *head;
    *head = n;
}

/* Unlinks and frees the first node holding value; 1 if there was one. */
static int list_remove(struct node **head, int32_t value) {
    for (struct node **at = head; *at; at = &(*at)->next) {
        if ((*at)->value != value) continue;
        struct node *gone = *at;
        *at = gone->next;
        TRY(tha_heap_free(heap, gone));
        return 1;
    }
    return 0;
}

static struct tnode *tree_min(struct tnode *t) {
    while (t && t->left) t = t->left;
    return t;
}

/* In-order successor through the parent links (no stack). */
static struct tnode *tree_next(struct tnode *t) {
    if (t->right) return tree_min(t->right);
    struct tnode *p = t->parent;
    while (p && t == p->right) {
        t = p;
        p = p->parent;
    }
    return p;
}

static struct tnode *tree_find(struct tnode *t, int32_t key) {
    while (t && t->key != key) t = key < t->key ? t->left : t->right;
    return t;
}

static void tree_insert(int32_t key) {
    struct tnode *n = alloc(TNODE, 1), *p = NULL, **at = &tree;
    n->key = key;
    while (*at) {
        p = *at;
        at = key < p->key ? &p->left : &p->right;
    }
    n->parent = p;
    *at = n;
}

/* Puts v where u was, for its parent. */
static void tree_transplant(struct tnode *u, struct tnode *v) {
    if (!u->parent) tree = v;
    else if (u == u->parent->left) u->parent->left = v;
    else u->parent->right = v;
    if (v) v->parent = u->parent;
}

static void tree_delete(struct tnode *z) {
    if (!z->left) {
        tree_transplant(z, z->right);
    } else if (!z->right) {
        tree_transplant(z, z->left);
    } else {
        struct tnode *y = tree_min(z->right);
        if (y->parent != z) {
            tree_transplant(y, y->right);
            y->right = z->right;
            y->right->parent = y;
        }
        tree_transplant(z, y);
        y->left = z->left;
        y->left->parent = y;
    }
    TRY(tha_heap_free(heap, z));
}

static int depth(const struct tnode *t) {
    int d = 0;
    while ((t = t->parent)) d++;
    return d;
}

/* Lowest common ancestor of a and b, climbing the parent links. */
static const struct tnode *lca(const struct tnode *a, const struct tnode *b) {
    int da = depth(a), db = depth(b);
    while (da > db) a = a->parent, da--;
    while (db > da) b = b->parent, db--;
    while (a != b) a = a->parent, b = b->parent;
    return a;
}

static char *string(const char *text) {
    char *s = alloc(THA_T_CHAR, (uint32_t)strlen(text) + 1);
    memcpy(s, text, strlen(text) + 1);
    return s;
}

static struct person *person(const char *name, const char *title) {
    struct person *p = alloc(PERSON, 1);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->title = string(title);
    return p;
}

/* ---- the state as text: what two mirrors must agree on ------------------ */

typedef struct text {
    char buf[16384];
    size_t n;
} text_t;

__attribute__((format(printf, 2, 3))) static void put(text_t *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(t->buf + t->n, sizeof t->buf - t->n, fmt, ap);
    va_end(ap);
    if (k > 0) t->n += (size_t)k < sizeof t->buf - t->n ? (size_t)k : sizeof t->buf - t->n - 1;
}

static void preorder(text_t *t, const struct tnode *n) {
    if (!n) return;
    put(t, " %d", n->key);
    preorder(t, n->left);
    preorder(t, n->right);
}

/* One line, from the four heads: the lists in order, the tree in order
 * with each node's parent, in preorder, and the people around the cycle.
 * tests/test_native.py builds the same line from a Python standby. */
static void describe(text_t *t, const struct node *l1, const struct node *l2,
                     struct tnode *tr, const struct person *b) {
    t->n = 0;
    t->buf[0] = 0;
    put(t, "list1:");
    for (const struct node *n = l1; n; n = n->next) put(t, " %d", n->value);
    put(t, " | list2:");
    for (const struct node *n = l2; n; n = n->next) put(t, " %d", n->value);
    put(t, " | inorder:");
    for (struct tnode *n = tree_min(tr); n; n = tree_next(n))
        put(t, " %d/%d", n->key, n->parent ? n->parent->key : 0);
    put(t, " | preorder:");
    preorder(t, tr);
    put(t, " | people:");
    if (b) {
        const struct person *e = b->engineer;
        put(t, " %s (%s) manages %s (%s), whose manager is %s", b->name, b->title,
            e ? e->name : "-", e ? e->title : "-",
            e && e->manager ? e->manager->name : "-");
    }
}

static void describe_heap(text_t *t, const tha_heap_t *h) {
    void *l1, *l2, *tr, *b;
    TRY(tha_root_get(h, "list1", &l1));
    TRY(tha_root_get(h, "list2", &l2));
    TRY(tha_root_get(h, "tree", &tr));
    TRY(tha_root_get(h, "boss", &b));
    describe(t, l1, l2, tr, b);
}

/* ---- the mirror: a heap in this process, or a standby over TCP --------- */

typedef struct mirror {
    tha_heap_t *local;      /* in-process mode */
    tha_net_t *net;         /* TCP mode */
    tha_net_options_t opt;
    const char *host[2];
    uint16_t port[2];
    int which;              /* the standby the net handle talks to */
    uint64_t seq;
} mirror_t;

/* In-process: the standby's heap walked and compared with the globals. */
static void compare(const mirror_t *m, const char *step) {
    text_t mine, theirs;
    describe(&mine, list1, list2, tree, boss);
    if (m->local) {
        describe_heap(&theirs, m->local);
        int same = strcmp(mine.buf, theirs.buf) == 0;
        int checked = tha_heap_check(m->local) == 0;
        printf("  mirror after %s: %s, heap check %s\n", step,
               same ? "same state" : "DIFFERENT", checked ? "ok" : "FAILED");
        if (!same) printf("    active: %s\n    mirror: %s\n", mine.buf, theirs.buf);
        failures += !same + !checked;
    } else {
        printf("state: %s\n", mine.buf); /* the test compares the standby's */
    }
}

static void net_open(mirror_t *m) {
    int rc = tha_net_active_open(&m->net, heap, m->host[m->which], m->port[m->which], &m->opt);
    if (rc) {
        fprintf(stderr, "cannot replicate to %s:%u: %s\n", m->host[m->which],
                m->port[m->which], m->net ? tha_net_errmsg(m->net) : tha_strerror(rc));
        exit(1);
    }
}

/* The whole image: a snapshot applied to a new heap (schema from the
 * frame), or the bulk sync tha_net_active_open runs. */
static void bulk_sync(mirror_t *m, const char *step) {
    if (m->host[0]) {
        net_open(m);
        printf("%s: bulk sync to %s:%u\n", step, m->host[m->which], m->port[m->which]);
    } else {
        size_t len;
        TRY(tha_heap_frame_size(heap, THA_FRAME_SNAPSHOT, &len));
        void *frame = malloc(len);
        tha_schema_t *s;
        char msg[256];
        if (!frame) exit(1);
        TRY(tha_heap_encode(heap, THA_FRAME_SNAPSHOT, frame, len, &len));
        TRY(tha_frame_schema(frame, len, &s, msg, sizeof msg));
        TRY(tha_heap_create(&m->local, s, 0, THA_TRACK_EXPLICIT));
        tha_schema_release(s);
        TRY(tha_heap_apply(m->local, frame, len));
        free(frame);
        printf("%s: bulk sync, %zu bytes (mirror at %p, active at %p)\n", step, len,
               tha_heap_base(m->local), tha_heap_base(heap));
    }
    compare(m, step);
}

/* What changed since the last sync, and nothing else. */
static void incremental_sync(mirror_t *m, const char *step) {
    size_t len;
    if (m->net) {
        int rc = tha_net_sync(m->net, THA_ACK_APPLIED, 5000, &m->seq);
        if (rc) {
            fprintf(stderr, "sync of seq %llu failed: %s\n", (unsigned long long)m->seq,
                    tha_net_errmsg(m->net));
            exit(1);
        }
        printf("%s: seq %llu applied by the standby\n", step, (unsigned long long)m->seq);
    } else {
        TRY(tha_heap_frame_size(heap, THA_FRAME_DELTA, &len));
        void *frame = malloc(len);
        if (!frame) exit(1);
        TRY(tha_heap_encode(heap, THA_FRAME_DELTA, frame, len, &len));
        TRY(tha_heap_apply(m->local, frame, len));
        free(frame);
        tha_stats_t st;
        TRY(tha_heap_stats(heap, &st));
        m->seq = st.seq;
        printf("%s: delta seq %llu, %zu bytes\n", step, (unsigned long long)m->seq, len);
    }
    compare(m, step);
}

/* Throws the standby away and fills a new, empty one. */
static void clean_standby(mirror_t *m, const char *step) {
    if (m->net) {
        if (!m->host[1]) {
            printf("%s: skipped (no second standby given)\n", step);
            return;
        }
        tha_net_close(m->net);
        m->net = NULL;
        m->which = 1;
    } else {
        tha_heap_destroy(m->local);
        m->local = NULL;
    }
    bulk_sync(m, step);
}

/* What the next incremental sync carries, before it is made. */
static void count_to_sync(void) {
    size_t len;
    tha_stats_t st;
    TRY(tha_heap_frame_size(heap, THA_FRAME_DELTA, &len));
    TRY(tha_heap_stats(heap, &st));
    printf("to sync: %llu blocks of 64 bytes (%zu bytes of delta) of %llu live objects\n",
           (unsigned long long)st.dirty_blocks, len, (unsigned long long)st.live_objects);
}

static size_t leak_report(const tha_heap_t *h, const char *who) {
    tha_leak_t leaks[16];
    size_t n;
    TRY(tha_leaks((tha_heap_t *)h, leaks, 16, &n));
    printf("leaks on the %s: %zu unreachable allocation(s)", who, n);
    for (size_t i = 0; i < n && i < 3; i++)
        printf("%s offset 0x%llx (%llu bytes)", i ? "," : ":",
               (unsigned long long)leaks[i].offset, (unsigned long long)leaks[i].bytes);
    printf("%s\n", n > 3 ? ", ..." : "");
    return n;
}

static void checkpoint_and_load(void) {
    char dir[] = "/tmp/tha-seed-XXXXXX", path[64];
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(path, sizeof path, "%s/seed.tha", dir);
    TRY(tha_heap_checkpoint(heap, path, NULL, NULL));
    tha_heap_t *loaded;
    tha_load_report_t rep;
    int rc = tha_heap_load(&loaded, path, NULL, &rep);
    if (rc) {
        fprintf(stderr, "load %s: %s\n", path, rep.msg);
        exit(1);
    }
    text_t mine, theirs;
    describe(&mine, list1, list2, tree, boss);
    describe_heap(&theirs, loaded);
    int same = strcmp(mine.buf, theirs.buf) == 0, checked = tha_heap_check(loaded) == 0;
    printf("checkpoint %s at seq %llu, loaded: %s, heap check %s\n", path,
           (unsigned long long)rep.seq, same ? "same state" : "DIFFERENT",
           checked ? "ok" : "FAILED");
    failures += !same + !checked;
    tha_heap_destroy(loaded);
    unlink(path);
    rmdir(dir);
}

static void traversals(void) {
    text_t t;
    describe(&t, list1, list2, tree, boss);
    printf("traversals: %s\n", t.buf);
    const struct tnode *a = tree_find(tree, 6), *b = tree_find(tree, 43),
                       *c = tree_find(tree, 56), *d = tree_find(tree, 93);
    if (a && b && c && d)
        printf("lowest common ancestor: lca(6, 43) = %d, lca(56, 93) = %d, lca(6, 93) = %d\n",
               lca(a, b)->key, lca(c, d)->key, lca(a, d)->key);
}

int main(int argc, char **argv) {
    mirror_t m = {0};
    if (argc == 2 || argc == 4 || argc > 5) {
        printf("usage: %s [HOST PORT [HOST2 PORT2]]\n  %s\n", argv[0], NET_MAC_SUPPORT);
        return 2;
    }
    for (int i = 0; i + 2 < argc && i < 4; i += 2) {
        long port = strtol(argv[i + 2], NULL, 10);
        if (port <= 0 || port > 65535) {
            fprintf(stderr, "bad port %s\n", argv[i + 2]);
            return 2;
        }
        m.host[i / 2] = argv[i + 1];
        m.port[i / 2] = (uint16_t)port;
    }
    secret_t key;
    if (net_secret(&m.opt, &key)) return 2;

    tha_schema_t *schema = seed_schema();
    TRY(tha_heap_create(&heap, schema, 64 << 20, THA_TRACK_AUTO));
    tha_schema_release(schema);
    printf("heap at %p, tracking %s\n", tha_heap_base(heap), tha_heap_tracking_name(heap));
    /* the globals are the roots: read at every sync, wherever they point */
    TRY(tha_root_bind(heap, "list1", (void *const *)&list1));
    TRY(tha_root_bind(heap, "list2", (void *const *)&list2));
    TRY(tha_root_bind(heap, "tree", (void *const *)&tree));
    TRY(tha_root_bind(heap, "boss", (void *const *)&boss));

    /* build */
    for (int i = 1; i <= 10; i++) list_push(&list1, i);
    for (int i = 101; i <= 110; i++) list_push(&list2, i);
    static const int32_t keys[] = {50, 25, 75, 12, 37, 62, 87, 6, 18, 31, 43, 56, 68, 81, 93};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) tree_insert(keys[i]);
    boss = person("ada", "chief engineer");
    boss->engineer = person("bob", "engineer");
    boss->engineer->manager = boss; /* the cycle */
    bulk_sync(&m, "build");

    /* add and remove list nodes, add tree nodes: plain writes */
    list_push(&list1, 11);
    list_push(&list2, 111);
    list_remove(&list1, 5);
    list_remove(&list2, 105);
    tree_insert(40);
    tree_insert(90);
    snprintf(boss->engineer->name, sizeof boss->engineer->name, "bea");
    traversals();
    count_to_sync();
    incremental_sync(&m, "add/remove nodes");

    /* remove half the nodes */
    for (int i = 1; i <= 11; i += 2) list_remove(&list1, i);
    for (int i = 101; i <= 111; i += 2) list_remove(&list2, i);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i += 2)
        tree_delete(tree_find(tree, keys[i]));
    count_to_sync();
    incremental_sync(&m, "remove half");

    /* exchange the lists: two globals swapped, nothing told to tha */
    struct node *tmp = list1;
    list1 = list2;
    list2 = tmp;
    count_to_sync();
    incremental_sync(&m, "exchange lists");

    clean_standby(&m, "clean standby");

    /* a leak: list2 cut after its first node, the rest never freed */
    list2->next = NULL;
    incremental_sync(&m, "cut list2");
    size_t leaked = leak_report(heap, "active");
    if (m.local && leak_report(m.local, "mirror") != leaked) failures++;
    uint64_t freed;
    TRY(tha_collect(heap, &freed));
    printf("collected %llu bytes\n", (unsigned long long)freed);
    incremental_sync(&m, "collect");
    if (leak_report(heap, "active") != 0 || (m.local && leak_report(m.local, "mirror") != 0))
        failures++;

    checkpoint_and_load();

    if (m.net) tha_net_close(m.net);
    tha_heap_destroy(m.local);
    tha_heap_destroy(heap);
    printf(failures ? "FAILED: %d mismatches\n" : "seed demo: every mirror matched\n", failures);
    return failures ? 1 : 0;
}

/* active.c — a native C active replicating to any tha standby (a Python
 * tha.Standby, `python -m tha standby`, or examples/c/standby.c) over TCP.
 *
 *   active HOST PORT [ROUNDS]      THA_SECRET=... for an authenticated link
 *
 * Builds the org chart of tests/test_replication.py (a department and
 * NSTAFF employees rooted at "staff"), connects (handshake + bulk sync),
 * then runs ROUNDS rounds (default 5) of changes, each followed by
 * tha_net_sync(ack = applied): when it returns, the standby has applied
 * the round and would resume from it if this process died. A real service
 * would hold its replies to clients until that point. Prints one line per
 * round. Without arguments it prints this usage and exits 0 (so that
 * `make -C csrc examples`, which runs every example bare, passes).
 *
 *   make -C csrc build/examples/active   (or link csrc/build/libtha.a)
 */
#include "org.h"

static void on_event(void *ctx, const tha_event_t *ev) {
    (void)ctx;
    if (ev->type == THA_EV_READY)
        printf("connected: standby at seq %llu, %s\n", (unsigned long long)ev->a,
               ev->b ? "resuming from the backlog" : "bulk sync");
    else if (ev->type == THA_EV_BULK_DONE)
        printf("bulk sync sent: %llu bytes at seq %llu\n", (unsigned long long)ev->a,
               (unsigned long long)ev->seq);
    else if (ev->type == THA_EV_ERROR || ev->type == THA_EV_REFUSED ||
             ev->type == THA_EV_FENCED)
        fprintf(stderr, "event: %s\n", ev->msg);
}

/* One round of changes, told to the heap (explicit tracking). */
static void change(tha_heap_t *h, struct emp *es, int round) {
    for (int i = 0; i < NSTAFF; i += 7) {
        es[i].salary = round * 1000.0 + i;
        TRY(tha_heap_touch(h, &es[i].salary, sizeof es[i].salary));
    }
    if (round == 2) { /* a new object, reached from a root and from es[0] */
        struct emp *newbie;
        TRY(tha_heap_alloc(h, EMP, 1, (void **)&newbie));
        snprintf(newbie->name, sizeof newbie->name, "newbie");
        newbie->id = 1000;
        newbie->mgr = &es[0];
        newbie->dept = es[0].dept;
        es[0].reports[3] = newbie;
        TRY(tha_heap_touch(h, &es[0].reports[3], sizeof es[0].reports[3]));
        TRY(tha_root_set(h, "newbie", newbie));
    }
    if (round == 3) { /* a pointer moves */
        es[9].mgr = &es[1];
        snprintf(es[9].name, sizeof es[9].name, "moved");
        TRY(tha_heap_touch(h, &es[9], sizeof es[9]));
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        printf("usage: %s HOST PORT [ROUNDS]\n  %s\n", argv[0], NET_MAC_SUPPORT);
        return 0;
    }
    const char *host = argv[1];
    long port = strtol(argv[2], NULL, 10);
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    if (port <= 0 || port > 65535 || rounds < 0) {
        fprintf(stderr, "bad port or rounds\n");
        return 2;
    }

    tha_schema_t *schema = org_schema();
    tha_heap_t *heap;
    TRY(tha_heap_create(&heap, schema, 16 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(schema);
    struct dept *eng;
    struct emp *es;
    TRY(tha_heap_alloc(heap, DEPT, 1, (void **)&eng));
    TRY(tha_heap_alloc(heap, EMP, NSTAFF, (void **)&es));
    snprintf(eng->name, sizeof eng->name, "eng");
    eng->id = 1;
    for (int i = 0; i < NSTAFF; i++) {
        snprintf(es[i].name, sizeof es[i].name, "emp%d", i);
        es[i].id = (uint32_t)i;
        es[i].dept = eng;
        es[i].mgr = &es[i / 2];
    }
    for (int i = 0; i < 3; i++) es[0].reports[i] = &es[i + 1];
    TRY(tha_heap_touch(heap, eng, 0));
    TRY(tha_heap_touch(heap, es, 0));
    TRY(tha_root_set(heap, "staff", es));
    TRY(tha_root_set(heap, "dept", eng));

    tha_net_options_t opt = {.on_event = on_event};
    secret_t key;
    if (net_secret(&opt, &key)) return 2;
    tha_net_t *net;
    int rc = tha_net_active_open(&net, heap, host, (uint16_t)port, &opt);
    if (rc) {
        fprintf(stderr, "cannot replicate to %s:%ld: %s\n", host, port,
                net ? tha_net_errmsg(net) : tha_strerror(rc));
        tha_net_close(net);
        tha_heap_destroy(heap);
        return 1;
    }
    uint64_t seq = 0;
    for (int round = 0; round <= rounds && !rc; round++) {
        if (round) change(heap, es, round); /* round 0: the state as built */
        rc = tha_net_sync(net, THA_ACK_APPLIED, 5000, &seq);
        if (!rc) printf("round %d: seq %llu applied by the standby\n", round,
                        (unsigned long long)seq);
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "sync of seq %llu failed: %s\n", (unsigned long long)seq,
                    tha_net_errmsg(net));
    else printf("done: %d rounds, last seq %llu\n", rounds, (unsigned long long)seq);
    tha_net_close(net);
    tha_heap_destroy(heap);
    return rc ? 1 : 0;
}

/* standby.c — a native C standby: mirrors whatever active connects (a C
 * examples/c/active.c or a Python tha.Active) and, when the active goes
 * away, prints a summary of the org chart it holds.
 *
 *   standby HOST PORT              PORT 0: any free port (printed)
 *                                  THA_SECRET=... for an authenticated link
 *
 * Prints "listening on HOST:PORT", serves one active until it closes the
 * connection (exit 0) or falls silent past the heartbeat timeout (exit 3:
 * where a real standby would promote itself), then walks the mirror from
 * its roots: the heap came from the wire (schema included), and is checked
 * against this program's own layout before a pointer is followed.
 * Without arguments it prints this usage and exits 0.
 */
#include "org.h"

static void on_event(void *ctx, const tha_event_t *ev) {
    (void)ctx;
    if (ev->type == THA_EV_READY)
        printf("active connected at seq %llu (epoch %llu)\n", (unsigned long long)ev->seq,
               (unsigned long long)ev->epoch);
    else if (ev->type == THA_EV_BULK_DONE)
        printf("bulk sync done: live at seq %llu\n", (unsigned long long)ev->seq);
    else if (ev->type == THA_EV_APPLIED)
        printf("applied seq %llu\n", (unsigned long long)ev->seq);
    else if (ev->type == THA_EV_ERROR || ev->type == THA_EV_REFUSED)
        fprintf(stderr, "event: %s\n", ev->msg);
    fflush(stdout);
}

/* What the mirror holds, in a form a test can compare. */
static int summarize(tha_heap_t *h) {
    tha_schema_t *mine = org_schema();
    char why[256];
    int rc = tha_schema_compare(tha_heap_schema(h), mine, why, sizeof why);
    tha_schema_release(mine);
    if (rc) {
        fprintf(stderr, "the mirror's layout is not this program's: %s\n", why);
        return 1;
    }
    tha_stats_t st;
    TRY(tha_heap_stats(h, &st));
    struct emp *es;
    TRY(tha_root_get(h, "staff", (void **)&es));
    double salaries = 0;
    unsigned long mgr_ids = 0;
    for (int i = 0; i < NSTAFF; i++) {
        salaries += es[i].salary;
        mgr_ids += es[i].mgr ? es[i].mgr->id : 0;
    }
    printf("seq %llu epoch %llu objects %llu\n", (unsigned long long)st.seq,
           (unsigned long long)st.epoch, (unsigned long long)st.live_objects);
    printf("staff %d salary_sum %.1f mgr_id_sum %lu dept %s\n", NSTAFF, salaries,
           mgr_ids, es[0].dept ? es[0].dept->name : "-");
    struct emp *nb = es[0].reports[3];
    printf("newbie %s mgr %s\n", nb ? nb->name : "-", nb && nb->mgr ? nb->mgr->name : "-");
    return tha_heap_check(h) ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        printf("usage: %s HOST PORT\n  %s\n", argv[0], NET_MAC_SUPPORT);
        return 0;
    }
    long p = strtol(argv[2], NULL, 10);
    if (p < 0 || p > 65535) {
        fprintf(stderr, "bad port\n");
        return 2;
    }
    uint16_t port = (uint16_t)p;
    tha_net_options_t opt = {.on_event = on_event};
    secret_t key;
    if (net_secret(&opt, &key)) return 2;
    tha_net_t *net;
    int rc = tha_net_standby_listen(&net, NULL, argv[1], &port, &opt);
    if (rc) {
        fprintf(stderr, "cannot listen on %s:%u: %s\n", argv[1], port, tha_strerror(rc));
        return 1;
    }
    printf("listening on %s:%u\n", argv[1], port);
    fflush(stdout);
    rc = tha_net_standby_accept(net, 30000);
    if (!rc) rc = tha_net_standby_serve(net, 0);
    if (rc) fprintf(stderr, "standby: %s\n", tha_net_errmsg(net));
    else printf("the active closed the connection\n");
    tha_heap_t *h = tha_net_heap(net, 0);
    int bad = h ? summarize(h) : 1;
    tha_net_close(net);
    if (rc == THA_ETIMEOUT) return 3;
    return rc || bad ? 1 : 0;
}

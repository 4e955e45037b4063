/* test_net.c — the native TCP driver over loopback, two real processes
 * (fork): syncs acknowledged as applied, a standby that stops answering
 * (sync times out, the link stays up, nothing downgraded, the next sync
 * catches up), and a reconnect that resumes from the backlog. The child is
 * the standby; its exit status says whether its mirror held what the
 * parent synced. */
#include "tha.h"
#include "check.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

struct rec {
    uint64_t id;
    double value;
    struct rec *next;
};

static uint32_t REC;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct rec, "rec", &REC));
    CHECK_OK(THA_FIELD_SCALAR(s, REC, struct rec, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, REC, struct rec, value, THA_T_F64, 0));
    CHECK_OK(THA_FIELD_PTR(s, REC, struct rec, next, "rec", 0));
    CHECK_OK(tha_schema_seal(s));
    return s;
}

enum { NREC = 100, CONNECTIONS = 2 };

static int resumed; /* READY events that said "resuming" */
static tha_net_t *standby_net; /* the standby's handle, for its callback */
static int bulk_heap_seen;     /* BULK_DONE found the new heap in the handle */

static void standby_event(void *ctx, const tha_event_t *ev) {
    (void)ctx;
    void *r;
    if (ev->type == THA_EV_BULK_DONE && tha_net_heap(standby_net, 0) &&
        tha_root_get(tha_net_heap(standby_net, 0), "list", &r) == 0)
        bulk_heap_seen = 1;
}

static void on_event(void *ctx, const tha_event_t *ev) {
    (void)ctx;
    if (ev->type == THA_EV_READY && ev->b) resumed++;
}

/* The standby: serves CONNECTIONS actives in turn, then checks the mirror
 * against the value the last round wrote. */
static int standby_main(tha_net_t *n, double want) {
    for (int c = 0; c < CONNECTIONS; c++) {
        if (tha_net_standby_accept(n, 20000)) return 10 + c;
        int rc = tha_net_standby_serve(n, 0);
        if (rc) {
            fprintf(stderr, "standby: %s\n", tha_net_errmsg(n));
            return 20 + c;
        }
    }
    tha_heap_t *h = tha_net_heap(n, 0);
    struct rec *r;
    if (!h || tha_root_get(h, "list", (void **)&r)) return 30;
    for (int i = 0; i < NREC; i++, r = r->next) {
        if (!r || r->id != (uint64_t)i) return 31;
        if (r->value != (i % 10 == 0 ? want : 0.0)) return 32;
    }
    if (!bulk_heap_seen) return 34; /* on_event saw the old heap */
    return tha_heap_check(h) ? 33 : 0;
}

static void test_loopback(void) {
    uint16_t port = 0;
    tha_net_t *sb;
    tha_net_options_t sopt = {.timeout_ms = 5000, .on_event = standby_event};
    CHECK_OK(tha_net_standby_listen(&sb, NULL, "127.0.0.1", &port, &sopt));
    standby_net = sb;
    CHECK(port != 0);
    const double last = 3.5;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = standby_main(sb, last);
        tha_net_close(sb);
        _exit(rc);
    }
    tha_net_close(sb); /* the parent's copy */

    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    struct rec *rs;
    CHECK_OK(tha_heap_alloc(h, REC, NREC, (void **)&rs));
    for (int i = 0; i < NREC; i++) {
        rs[i].id = (uint64_t)i;
        rs[i].next = i + 1 < NREC ? &rs[i + 1] : NULL;
    }
    CHECK_OK(tha_heap_touch(h, rs, 0));
    CHECK_OK(tha_root_set(h, "list", rs));

    tha_net_t *n;
    tha_net_options_t opt = {.on_event = on_event, .timeout_ms = 5000};
    CHECK_OK(tha_net_active_open(&n, h, "127.0.0.1", port, &opt));
    uint64_t seq = 0, prev;
    CHECK_OK(tha_net_sync(n, THA_ACK_APPLIED, 5000, &seq));
    for (int round = 1; round <= 3; round++) {
        for (int i = 0; i < NREC; i += 10) {
            rs[i].value = round;
            CHECK_OK(tha_heap_touch(h, &rs[i].value, sizeof rs[i].value));
        }
        prev = seq;
        CHECK_OK(tha_net_sync(n, THA_ACK_APPLIED, 5000, &seq));
        CHECK(seq == prev + 1);
    }
    CHECK_OK(tha_net_poll(n, 50)); /* heartbeats only */
    /* this standby keeps no log: it never acknowledges "persisted" */
    CHECK_RC(tha_net_sync(n, THA_ACK_PERSISTED, 100, &seq), THA_ETIMEOUT);

    /* a standby that stops answering: the sync times out, the connection
     * stays, and once it answers again the next sync brings it up to date */
    kill(pid, SIGSTOP);
    rs[0].value = 99;
    CHECK_OK(tha_heap_touch(h, &rs[0].value, sizeof rs[0].value));
    prev = seq;
    CHECK_RC(tha_net_sync(n, THA_ACK_APPLIED, 300, &seq), THA_ETIMEOUT);
    CHECK(seq == prev + 1);
    CHECK_CONTAINS(tha_net_errmsg(n), "did not acknowledge 'applied'");
    kill(pid, SIGCONT);
    prev = seq;
    CHECK_OK(tha_net_sync(n, THA_ACK_APPLIED, 5000, &seq));
    CHECK(seq == prev + 1);

    /* reconnect: the standby resumes from the backlog, no bulk sync */
    for (int i = 0; i < NREC; i += 10) {
        rs[i].value = last;
        CHECK_OK(tha_heap_touch(h, &rs[i].value, sizeof rs[i].value));
    }
    CHECK_OK(tha_net_reconnect(n));
    CHECK(resumed == 1);
    CHECK_OK(tha_net_sync(n, THA_ACK_APPLIED, 5000, &seq));
    tha_net_close(n);

    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        fprintf(stderr, "standby exit status %d\n", WEXITSTATUS(status));
    tha_heap_destroy(h);
}

static void test_refusals(void) {
    tha_net_t *n = NULL;
    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    /* nobody listening: a disconnected handle that says why */
    uint16_t port = 0;
    tha_net_t *sb;
    CHECK_OK(tha_net_standby_listen(&sb, NULL, "127.0.0.1", &port, NULL));
    tha_net_close(sb); /* the port is free again */
    int rc = tha_net_active_open(&n, h, "127.0.0.1", port, NULL);
    CHECK(rc < 0 && n != NULL);
    CHECK_CONTAINS(tha_net_errmsg(n), "connecting to");
    uint64_t seq = 0;
    CHECK(tha_net_sync(n, THA_ACK_APPLIED, 100, &seq) < 0);
    CHECK(seq == 1); /* kept in the backlog for a reconnect */
    CHECK_CONTAINS(tha_net_errmsg(n), "not connected");
    tha_net_close(n);
    /* a standby without a secret on a non-loopback address is refused */
    port = 0;
    CHECK_RC(tha_net_standby_listen(&sb, NULL, "0.0.0.0", &port, NULL), THA_EINVAL);
    CHECK(sb == NULL);
    CHECK_RC(tha_net_active_open(&n, NULL, "127.0.0.1", 1, NULL), THA_EINVAL);
    tha_heap_destroy(h);
}

int main(void) {
    RUN(test_loopback);
    RUN(test_refusals);
    return CHECK_DONE();
}

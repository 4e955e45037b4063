/* net.c — the native driver: one TCP connection per tha_net_t, blocking
 * calls over non-blocking sockets and poll(). It moves bytes between the
 * socket and a tha_session_t, keeps time and turns events into return
 * codes; the protocol, the MAC checks and the frames are the session's.
 * Words: conn = the connected socket and its session; drop = close both and
 * remember why (status, err); pass = one poll + read + write + tick.
 */
#include "base.h"
#include "replication.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256u << 10) /* bytes read per pass */

struct tha_net {
    int role;                  /* enum tha_role */
    tha_net_options_t opt;     /* defaults filled in; opt.secret -> secret */
    uint8_t secret[256];       /* a copy: the caller's need not outlive n */
    int fd;                    /* the connection; -1 none */
    int lfd;                   /* standby: listening socket; -1 none */
    tha_session_t *s;          /* the connection's session; NULL with fd -1 */
    tha_heap_t *heap;          /* active: the source; standby: live mirror or NULL */
    int owns_heap;             /* standby: heap came from a bulk sync, not taken */
    tha_backlog_t *backlog;    /* active: owned */
    char host[256];            /* active: where the standby listens */
    uint16_t port;
    char peer[300];            /* "host:port" for messages */
    uint8_t *rbuf;             /* RBUF bytes */
    int status;                /* why the connection ended; 0 while it lives */
    int eof;                   /* the peer closed the connection cleanly */
    int fenced;                /* active: a newer epoch exists; all syncs fail */
    uint64_t fenced_epoch;
    char err[512];
};

#define NFAIL(n, code, ...) tha__fail((n)->err, sizeof (n)->err, (code), __VA_ARGS__)

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- connection ------------------------------------------------------- */

int tha_net_send_output(tha_session_t *s, int fd, size_t max_item, size_t *sent) {
    size_t total = 0;
    int rc = 0;
    for (;;) {
        /* the queued pieces in one sendmsg: a frame's 20-byte header does
         * not go out (and wake the peer) on its own */
        enum { MAXV = 16 };
        const void *p[MAXV];
        size_t l[MAXV];
        int n = tha__session_output_vec(s, p, l, MAXV);
        if (n <= 0 || (max_item && l[0] > max_item)) break;
        struct iovec iov[MAXV];
        size_t want = 0;
        int k = 0;
        for (; k < n && !(max_item && l[k] > max_item); k++) {
            iov[k].iov_base = (void *)p[k];
            iov[k].iov_len = l[k];
            want += l[k];
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)k};
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) rc = -errno;
            break;
        }
        tha_session_advance(s, (size_t)w);
        total += (size_t)w;
        if ((size_t)w < want) break;
    }
    if (sent) *sent = total;
    return rc;
}

/* Writes what the session still has to say (a REFUSE, say) for a moment,
 * best effort: the peer should learn why before the socket closes. */
static void flush_briefly(tha_net_t *n) {
    uint64_t until = now_ms() + 200;
    for (;;) {
        const void *d;
        size_t len;
        if (tha_session_output(n->s, &d, &len) || !len) return;
        ssize_t w = send(n->fd, d, len, MSG_NOSIGNAL);
        if (w > 0) {
            tha_session_advance(n->s, (size_t)w);
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return;
        uint64_t now = now_ms();
        if (now >= until) return;
        struct pollfd p = {.fd = n->fd, .events = POLLOUT};
        poll(&p, 1, (int)(until - now));
    }
}

/* Ends the connection with status code; the message (if fmt) replaces
 * n->err. The session goes with it: a standby's live heap stays here. */
static int drop(tha_net_t *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int drop(tha_net_t *n, int code, const char *fmt, ...) {
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(n->err, sizeof n->err, fmt, ap);
        va_end(ap);
    }
    if (n->s && n->fd >= 0) flush_briefly(n);
    if (n->fd >= 0) close(n->fd);
    n->fd = -1;
    tha_session_destroy(n->s);
    n->s = NULL;
    n->status = code;
    return code;
}

/* Turns the session's events into state; returns the status that ends the
 * connection, or 0. */
static int drain_events(tha_net_t *n) {
    tha_event_t ev;
    int status = 0;
    while (n->s && tha_session_event(n->s, &ev)) {
        /* the handle's state first, then the callback: inside on_event for
         * THA_EV_BULK_DONE, tha_net_heap already returns the new heap */
        switch (ev.type) {
        case THA_EV_BULK_DONE:
            if (n->role == THA_ROLE_STANDBY) { /* a new live heap: ours now */
                tha_heap_t *h = tha_session_take_heap(n->s);
                if (h != n->heap) {
                    if (n->owns_heap) tha_heap_destroy(n->heap);
                    n->heap = h;
                    n->owns_heap = 1;
                }
            }
            break;
        case THA_EV_FENCED:
            if (n->role == THA_ROLE_ACTIVE) {
                n->fenced = 1;
                n->fenced_epoch = ev.epoch;
            }
            NFAIL(n, THA_EFENCED, "%s: %s", n->peer, ev.msg);
            status = THA_EFENCED;
            break;
        case THA_EV_REFUSED:
            NFAIL(n, ev.code, "%s refused: %s", n->peer, ev.msg);
            status = ev.code ? ev.code : THA_EPROTO;
            /* "fenced" from a peer that never proved the secret is not the
             * word of a newer active: nothing to stop for */
            if (!ev.a && status == THA_EFENCED) status = THA_EPROTO;
            break;
        case THA_EV_ERROR: /* fatal only if it closed the session (below) */
            NFAIL(n, ev.code, "%s: %s", n->peer, ev.msg);
            if (!status) status = ev.code ? ev.code : THA_EPROTO;
            break;
        case THA_EV_TIMEOUT:
            NFAIL(n, THA_ETIMEOUT, "%s: %s", n->peer, ev.msg);
            status = THA_ETIMEOUT;
            break;
        default:
            break;
        }
        if (n->opt.on_event) n->opt.on_event(n->opt.event_ctx, &ev);
    }
    if (!n->s || status == THA_ETIMEOUT || status == THA_EFENCED) return status;
    tha_session_status_t st;
    tha_session_status(n->s, &st);
    if (st.state == 4) return status ? status : THA_ECLOSED;
    return 0; /* an ERROR the session survives (a refused frame: bulk sync) */
}

/* One pass: waits up to wait_ms for the socket, writes what the session
 * has, reads what arrived, ticks. 0 while the connection lives (*moved set
 * if bytes went either way), else the status that dropped it. */
static int pass(tha_net_t *n, int wait_ms, int *moved) {
    if (n->fd < 0) return n->status ? n->status : THA_ECLOSED;
    const void *d;
    size_t len;
    int rc = tha_session_output(n->s, &d, &len);
    if (rc) {
        int st = drain_events(n);
        if (st) return drop(n, st, NULL);
        return drop(n, rc, "%s: cannot produce output: %s", n->peer, tha_strerror(rc));
    }
    struct pollfd p = {.fd = n->fd, .events = POLLIN | (len ? POLLOUT : 0)};
    int pr = poll(&p, 1, wait_ms < 0 ? 0 : wait_ms);
    if (pr < 0 && errno != EINTR)
        return drop(n, -errno, "poll on %s: %s", n->peer, strerror(errno));
    uint64_t now = now_ms();
    if (pr > 0 && len && (p.revents & POLLOUT)) {
        ssize_t w = send(n->fd, d, len, MSG_NOSIGNAL);
        if (w > 0) {
            tha_session_advance(n->s, (size_t)w);
            *moved = 1;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return drop(n, -errno, "sending to %s: %s", n->peer, strerror(errno));
        }
    }
    if (pr > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t r = recv(n->fd, n->rbuf, RBUF, 0);
        if (r > 0) {
            tha_session_feed(n->s, n->rbuf, (size_t)r, now);
            *moved = 1;
        } else if (r == 0) {
            int st = drain_events(n);
            if (st) return drop(n, st, NULL);
            tha_session_status_t ss;
            tha_session_status(n->s, &ss);
            if (ss.state == 0) /* never proven: not "the active went away" */
                return drop(n, THA_EPROTO, "%s closed the connection during the "
                            "handshake", n->peer);
            n->eof = 1;
            return drop(n, THA_ECLOSED, "%s closed the connection", n->peer);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return drop(n, -errno, "receiving from %s: %s", n->peer, strerror(errno));
        }
    }
    tha_session_tick(n->s, now);
    int st = drain_events(n);
    return st ? drop(n, st, NULL) : 0;
}

static int set_socket_options(int fd) {
    int one = 1;
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int new_session(tha_net_t *n, int fd) {
    tha_session_config_t cfg = {.role = n->role, .node_id = n->opt.node_id,
                                .secret = n->opt.secret, .secret_len = n->opt.secret_len,
                                .mac = n->opt.mac, .mac_ctx = n->opt.mac_ctx,
                                .heartbeat_ms = n->opt.heartbeat_ms,
                                .timeout_ms = n->opt.timeout_ms};
    int rc = tha_session_create(&n->s, &cfg, n->heap, n->backlog);
    if (!rc) rc = tha_session_start(n->s, now_ms());
    if (rc) {
        tha_session_destroy(n->s);
        n->s = NULL;
        close(fd);
        return NFAIL(n, rc, "cannot start a session: %s", tha_strerror(rc));
    }
    n->fd = fd;
    n->status = 0;
    n->eof = 0;
    return 0;
}

/* A connected non-blocking socket to host:port within timeout_ms. */
static int dial(tha_net_t *n, uint64_t timeout_ms, int *out) {
    char service[8];
    snprintf(service, sizeof service, "%u", n->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(n->host, service, &hints, &res);
    if (g)
        return NFAIL(n, THA_EINVAL, "cannot resolve %s: %s", n->host, gai_strerror(g));
    uint64_t deadline = now_ms() + timeout_ms;
    int rc = THA_EINVAL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = NFAIL(n, -errno, "socket: %s", strerror(errno));
            continue;
        }
        if ((rc = set_socket_options(fd)) != 0) {
            close(fd);
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            for (;;) {
                uint64_t now = now_ms();
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                int pr = now < deadline ? poll(&p, 1, (int)(deadline - now)) : 0;
                if (pr < 0 && errno == EINTR) continue;
                if (pr == 0) {
                    rc = NFAIL(n, THA_ETIMEOUT, "connecting to %s: no answer within "
                               "%llu ms", n->peer, (unsigned long long)timeout_ms);
                    break;
                }
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                if (pr < 0) soerr = errno;
                else getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (!soerr) {
                    freeaddrinfo(res);
                    *out = fd;
                    return 0;
                }
                rc = NFAIL(n, -soerr, "connecting to %s: %s", n->peer, strerror(soerr));
                break;
            }
        } else {
            rc = NFAIL(n, -errno, "connecting to %s: %s", n->peer, strerror(errno));
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

static void fill_defaults(tha_net_options_t *o, const tha_net_options_t *given) {
    if (given) *o = *given;
    else memset(o, 0, sizeof *o);
    if (!o->node_id && getrandom(&o->node_id, sizeof o->node_id, 0) != sizeof o->node_id)
        o->node_id = (uint64_t)now_ms() ^ (uint64_t)getpid() << 32;
    if (!o->heartbeat_ms) o->heartbeat_ms = 200;
    if (!o->timeout_ms) o->timeout_ms = 2000;
    if (!o->open_timeout_ms) o->open_timeout_ms = 10000;
}

/* A secret fits the copy and comes with its HMAC. */
static bool options_ok(const tha_net_options_t *opt) {
    return !opt || (opt->secret_len <= sizeof ((tha_net_t *)0)->secret &&
                    (!opt->secret_len || (opt->secret && opt->mac)));
}

static tha_net_t *net_new(int role, const tha_net_options_t *opt) {
    tha_net_t *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->rbuf = malloc(RBUF);
    if (!n->rbuf) {
        free(n);
        return NULL;
    }
    n->role = role;
    n->fd = n->lfd = -1;
    fill_defaults(&n->opt, opt);
    if (n->opt.secret_len > sizeof n->secret || (n->opt.secret_len && !n->opt.mac)) {
        free(n->rbuf);
        free(n);
        return NULL;
    }
    if (n->opt.secret_len) memcpy(n->secret, n->opt.secret, n->opt.secret_len);
    n->opt.secret = n->opt.secret_len ? n->secret : NULL;
    return n;
}

/* ---- active ----------------------------------------------------------- */

int tha_net_active_open(tha_net_t **out, tha_heap_t *heap, const char *host,
                        uint16_t port, const tha_net_options_t *opt) {
    if (!out) return THA_EINVAL;
    *out = NULL;
    if (!heap || !host || !port || strlen(host) >= sizeof ((tha_net_t *)0)->host)
        return THA_EINVAL;
    if (!options_ok(opt)) return THA_EINVAL;
    tha_net_t *n = net_new(THA_ROLE_ACTIVE, opt);
    if (!n) return THA_ENOMEM;
    int rc = tha_backlog_create(&n->backlog, n->opt.backlog_bytes);
    if (rc) {
        tha_net_close(n);
        return rc;
    }
    n->heap = heap;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    snprintf(n->peer, sizeof n->peer, "standby %s:%u", host, port);
    *out = n;
    return tha_net_reconnect(n);
}

int tha_net_reconnect(tha_net_t *n) {
    if (!n || n->role != THA_ROLE_ACTIVE) return THA_EINVAL;
    if (n->fenced)
        return NFAIL(n, THA_EFENCED, "fenced: a standby was promoted to epoch %llu; "
                     "this active must stop", (unsigned long long)n->fenced_epoch);
    if (n->fd >= 0) drop(n, THA_ECLOSED, NULL);
    n->err[0] = 0;
    int fd = -1, rc = dial(n, n->opt.open_timeout_ms, &fd);
    if (rc) return n->status = rc;
    if ((rc = new_session(n, fd)) != 0) return n->status = rc;
    /* handshake, then the bulk stream or the resumed frames, all written;
     * the deadline moves while bytes do (a large bulk takes its time) */
    uint64_t deadline = now_ms() + n->opt.open_timeout_ms;
    for (;;) {
        const void *d;
        size_t len;
        tha_session_status_t st;
        tha_session_status(n->s, &st);
        if (st.state == 3 && !tha_session_output(n->s, &d, &len) && !len) return 0;
        uint64_t now = now_ms();
        if (now >= deadline)
            return drop(n, THA_ETIMEOUT, "%s: handshake and bulk sync stalled for "
                        "%llu ms", n->peer, (unsigned long long)n->opt.open_timeout_ms);
        int moved = 0;
        uint64_t wait = deadline - now;
        rc = pass(n, (int)(wait < n->opt.heartbeat_ms ? wait : n->opt.heartbeat_ms), &moved);
        if (rc) return rc;
        if (moved) deadline = now_ms() + n->opt.open_timeout_ms;
    }
}

static const char *ack_name(int ack) {
    static const char *const names[] = {"none", "received", "applied", "persisted"};
    return ack >= 0 && ack <= THA_ACK_PERSISTED ? names[ack] : "?";
}

int tha_net_sync(tha_net_t *n, int ack, uint32_t timeout_ms, uint64_t *seq) {
    if (!n || n->role != THA_ROLE_ACTIVE || ack < THA_ACK_NONE || ack > THA_ACK_PERSISTED)
        return THA_EINVAL;
    if (n->fenced)
        return NFAIL(n, THA_EFENCED, "fenced: a standby was promoted to epoch %llu; "
                     "this active must stop", (unsigned long long)n->fenced_epoch);
    /* Encoded straight into the backlog, which checks everything that could
     * refuse the frame before the heap commits it: a failure leaves the heap
     * as it was (a frame encoded here and then refused by the backlog would
     * be a seq no standby ever gets, and every later sync would fail). */
    uint64_t fseq;
    size_t len;
    int rc = tha_backlog_encode(n->backlog, n->heap, &fseq, &len);
    if (rc) return NFAIL(n, rc, "%s", tha_heap_errmsg(n->heap));
    if (seq) *seq = fseq;
    if (n->fd < 0)
        return NFAIL(n, n->status ? n->status : THA_ECLOSED, "seq %llu is in the backlog "
                     "but %s is not connected (tha_net_reconnect resumes)%s%s",
                     (unsigned long long)fseq, n->peer, n->err[0] ? ": " : "", n->err);
    /* the standby acknowledges at least reception, so acks keep flowing */
    rc = tha_session_pump(n->s, ack > THA_ACK_RECEIVED ? ack : THA_ACK_RECEIVED);
    if (rc && (rc = drain_events(n)) != 0) return drop(n, rc, NULL);
    uint64_t limit = timeout_ms ? timeout_ms : 5000, deadline = now_ms() + limit;
    for (int settled = 0;;) {
        const void *d;
        size_t pending;
        tha_session_status_t st;
        if (tha_session_output(n->s, &d, &pending)) pending = 1;
        if (!pending && !settled) { /* sent: its backlog copy while the acks come */
            tha_backlog_settle(n->backlog); /* ENOMEM: the next encode retries */
            settled = 1;
        }
        tha_session_status(n->s, &st);
        if (!pending && (ack == THA_ACK_NONE || st.acked[ack] >= fseq)) return 0;
        uint64_t now = now_ms();
        if (now >= deadline)
            return NFAIL(n, THA_ETIMEOUT, "seq %llu: %s did not acknowledge '%s' within "
                         "%llu ms (it has %llu)", (unsigned long long)fseq, n->peer,
                         ack_name(ack), (unsigned long long)limit,
                         (unsigned long long)st.acked[ack ? ack : 1]);
        int moved = 0;
        uint64_t wait = deadline - now;
        rc = pass(n, (int)(wait < n->opt.heartbeat_ms ? wait : n->opt.heartbeat_ms), &moved);
        if (rc) return rc;
    }
}

int tha_net_poll(tha_net_t *n, uint32_t wait_ms) {
    if (!n) return THA_EINVAL;
    uint64_t deadline = now_ms() + wait_ms;
    for (;;) {
        int moved = 0;
        uint64_t now = now_ms();
        uint64_t wait = now < deadline ? deadline - now : 0;
        int rc = pass(n, (int)(wait < n->opt.heartbeat_ms ? wait : n->opt.heartbeat_ms), &moved);
        if (rc) return rc;
        if (now_ms() >= deadline) return 0;
    }
}

/* ---- standby ---------------------------------------------------------- */

static bool is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

int tha_net_standby_listen(tha_net_t **out, tha_heap_t *heap, const char *host,
                           uint16_t *port, const tha_net_options_t *opt) {
    if (!out) return THA_EINVAL;
    *out = NULL;
    if (!host || !port) return THA_EINVAL;
    char service[8];
    snprintf(service, sizeof service, "%u", *port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE}, *res;
    if (getaddrinfo(host, service, &hints, &res)) return THA_EINVAL;
    if (!(opt && opt->secret_len) && !is_loopback(res->ai_addr)) {
        freeaddrinfo(res); /* anyone who can reach it could replace the state */
        return THA_EINVAL;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    int one = 1, rc = 0;
    if (fd < 0) rc = -errno;
    if (!rc) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!rc && (bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 8))) rc = -errno;
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (!rc && getsockname(fd, (struct sockaddr *)&ss, &sl)) rc = -errno;
    if (!rc && (rc = set_socket_options(fd)) == 0) {
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    }
    if (rc) {
        if (fd >= 0) close(fd);
        return rc;
    }
    if (!options_ok(opt)) return THA_EINVAL;
    tha_net_t *n = net_new(THA_ROLE_STANDBY, opt);
    if (!n) {
        close(fd);
        return THA_ENOMEM;
    }
    n->lfd = fd;
    n->heap = heap;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = *port;
    snprintf(n->peer, sizeof n->peer, "active");
    *out = n;
    return 0;
}

int tha_net_standby_accept(tha_net_t *n, uint32_t timeout_ms) {
    if (!n || n->role != THA_ROLE_STANDBY || n->lfd < 0) return THA_EINVAL;
    if (n->fd >= 0) drop(n, THA_ECLOSED, NULL); /* one active at a time: the newest */
    n->err[0] = 0;
    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = now_ms();
        int wait = timeout_ms ? (now < deadline ? (int)(deadline - now) : 0) : -1;
        struct pollfd p = {.fd = n->lfd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return NFAIL(n, -errno, "poll: %s", strerror(errno));
        if (pr == 0)
            return NFAIL(n, THA_ETIMEOUT, "no active connected within %u ms", timeout_ms);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(n->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
                errno == ECONNABORTED)
                continue;
            return NFAIL(n, -errno, "accept: %s", strerror(errno));
        }
        char addr[INET6_ADDRSTRLEN] = "?";
        uint16_t port = 0;
        if (ss.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof addr);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof addr);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        snprintf(n->peer, sizeof n->peer, "active %s:%u", addr, port);
        int rc = set_socket_options(fd);
        if (rc) {
            close(fd);
            return NFAIL(n, rc, "%s: %s", n->peer, tha_strerror(rc));
        }
        return new_session(n, fd);
    }
}

int tha_net_standby_serve(tha_net_t *n, uint32_t timeout_ms) {
    if (!n || n->role != THA_ROLE_STANDBY) return THA_EINVAL;
    if (n->fd < 0) return n->eof ? 0 : n->status ? n->status : THA_ECLOSED;
    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int moved = 0, wait = (int)n->opt.heartbeat_ms;
        if (timeout_ms) {
            uint64_t now = now_ms();
            if (now >= deadline) return 1;
            if (deadline - now < (uint64_t)wait) wait = (int)(deadline - now);
        }
        int rc = pass(n, wait, &moved);
        if (rc) return n->eof ? 0 : rc;
    }
}

/* ---- both ------------------------------------------------------------- */

tha_heap_t *tha_net_heap(tha_net_t *n, int take) {
    if (!n) return NULL;
    if (take && n->role == THA_ROLE_STANDBY) n->owns_heap = 0;
    return n->heap;
}

const char *tha_net_errmsg(const tha_net_t *n) {
    return n ? n->err : "no handle";
}

void tha_net_close(tha_net_t *n) {
    if (!n) return;
    if (n->fd >= 0) drop(n, THA_ECLOSED, NULL);
    tha_session_destroy(n->s);
    if (n->lfd >= 0) close(n->lfd);
    if (n->owns_heap) tha_heap_destroy(n->heap);
    tha_backlog_destroy(n->backlog);
    free(n->rbuf);
    memset(n->secret, 0, sizeof n->secret);
    free(n);
}

/* _cdef.h — the cffi cdef of tha.h, written by hand, declaration for
 * declaration in the header's order. Values are left to the C compiler
 * ("..."); structs are spelled out so cffi checks their layout. The
 * THA_STRUCT/THA_FIELD_* registration macros are C-only and absent.
 * tests/test_cdef.py checks every THA_API function is declared here. */

/* ---- version ---- */
#define THA_VERSION_MAJOR ...
#define THA_VERSION_MINOR ...
#define THA_VERSION_PATCH ...
static const char *const THA_VERSION_STRING;

/* ---- errors ---- */
enum tha_error {
    THA_EINVAL, THA_ENOMEM, THA_ECAPACITY, THA_ENOTLIVE, THA_EFOREIGN,
    THA_ESCHEMA, THA_EMISMATCH, THA_EFRAME, THA_ECHECKSUM, THA_ESEQ,
    THA_ERANGE, THA_ENOTFOUND, THA_ETOOSMALL, THA_EVERSION, THA_EFULL,
    THA_ESTATE, THA_ESTALE, THA_ECORRUPT, THA_EPROTO, THA_EAUTH,
    THA_EFENCED, THA_ECLOSED, THA_ETIMEOUT, THA_OK, ...
};

const char *tha_strerror(int code);
const char *tha_version(void);

/* ---- schema ---- */
typedef ... tha_schema_t;

enum tha_prim {
    THA_T_CHAR, THA_T_I8, THA_T_U8, THA_T_I16, THA_T_U16, THA_T_I32,
    THA_T_U32, THA_T_I64, THA_T_U64, THA_T_F32, THA_T_F64, THA_T_BOOL,
    THA_T_VOID, THA_T_RAW, THA_T_FIRST_USER, ...
};

enum tha_kind {
    THA_K_SCALAR, THA_K_STRUCT, THA_K_PTR, THA_K_FUNC, THA_K_BITS, ...
};

#define THA_T_HANDLE ...
#define THA_MAX_DIMS ...
#define THA_NAME_MAX ...

typedef struct tha_field {
    const char *name;
    uint32_t offset;
    uint32_t kind;
    uint32_t prim;
    const char *target;
    uint32_t dims[...]; /* THA_MAX_DIMS */
    uint32_t bits[2];
    const char *sig;
    uint32_t tag_mask;
} tha_field_t;

int tha_schema_create(tha_schema_t **out);
void tha_schema_release(tha_schema_t *s);
const char *tha_schema_errmsg(const tha_schema_t *s);
int tha_schema_add_struct(tha_schema_t *s, const char *name, size_t size,
                          size_t align, int is_union, uint32_t *type_id);
int tha_schema_add_field(tha_schema_t *s, uint32_t type_id,
                         const tha_field_t *field);
int tha_schema_add_func(tha_schema_t *s, const char *name, void (*fn)(void));
int tha_schema_bind_func(tha_schema_t *s, const char *name, void (*fn)(void));
int tha_schema_add_extern(tha_schema_t *s, const char *name, size_t size,
                          const void *addr);
int tha_schema_bind_extern(tha_schema_t *s, const char *name, const void *addr);
int tha_schema_bind_from(tha_schema_t *dst, const tha_schema_t *src);
int tha_schema_seal(tha_schema_t *s);
void tha_schema_clear_add_error(tha_schema_t *s);
uint64_t tha_schema_fingerprint(const tha_schema_t *s);
int tha_schema_serialize(const tha_schema_t *s, void *buf, size_t cap,
                         size_t *len);
int tha_schema_deserialize(const void *buf, size_t len, tha_schema_t **out,
                           char *msg, size_t msgcap);
int tha_schema_compare(const tha_schema_t *a, const tha_schema_t *b,
                       char *msg, size_t msgcap);

typedef struct tha_type_info {
    const char *name;
    uint32_t id;
    uint32_t is_union;
    uint32_t is_prim;
    uint32_t nfields;
    uint64_t size;
    uint64_t align;
    uint32_t nslots;
} tha_type_info_t;

uint32_t tha_schema_type_count(const tha_schema_t *s);
uint32_t tha_schema_type_id(const tha_schema_t *s, uint32_t id);
int tha_schema_type_info(const tha_schema_t *s, uint32_t id,
                         tha_type_info_t *out);
int tha_schema_type_by_name(const tha_schema_t *s, const char *name,
                            uint32_t *id);
int tha_schema_field_info(const tha_schema_t *s, uint32_t id, uint32_t i,
                          tha_field_t *out);
uint32_t tha_schema_func_count(const tha_schema_t *s);
int tha_schema_func_info(const tha_schema_t *s, uint32_t i, const char **name,
                         void (**fn)(void));
uint32_t tha_schema_extern_count(const tha_schema_t *s);
int tha_schema_extern_info(const tha_schema_t *s, uint32_t i, const char **name,
                           size_t *size, const void **addr);

/* ---- heap ---- */
typedef ... tha_heap_t;

enum tha_tracking { THA_TRACK_AUTO, THA_TRACK_EXPLICIT, THA_TRACK_DIFF, THA_TRACK_WP,
                    ... };

int tha_heap_create(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                    int tracking);
#define THA_BASE_ALIGN ...
int tha_heap_create_at(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                       int tracking, void *base);
void tha_heap_destroy(tha_heap_t *h);
const char *tha_heap_errmsg(const tha_heap_t *h);
const char *tha_heap_tracking_name(const tha_heap_t *h);
int tha_heap_set_tracking(tha_heap_t *h, int tracking);
const tha_schema_t *tha_heap_schema(const tha_heap_t *h);
void *tha_heap_base(const tha_heap_t *h);

int tha_heap_alloc(tha_heap_t *h, uint32_t type_id, uint32_t count,
                   void **out);
int tha_heap_free(tha_heap_t *h, void *p);
int tha_heap_size_type(tha_heap_t *h, size_t size, uint32_t type_id);
int tha_heap_size_multiple(tha_heap_t *h, uint32_t type_id);
int tha_heap_alloc_sized(tha_heap_t *h, size_t size, void **out);
int tha_heap_touch(tha_heap_t *h, const void *p, size_t len);
int tha_heap_touch_range(tha_heap_t *h, const void *p, size_t len);
int tha_heap_touch_all(tha_heap_t *h);

typedef struct tha_obj {
    void *ptr;
    uint64_t offset;
    uint32_t type_id;
    uint32_t count;
    uint64_t size;
} tha_obj_t;

int tha_heap_lookup(const tha_heap_t *h, const void *p, tha_obj_t *out);
int tha_heap_next(const tha_heap_t *h, uint64_t *cursor, tha_obj_t *out);
/* build_ext.py: up to n objects of tha_heap_next in one call (dump()) */
size_t tha_py_next_batch(const tha_heap_t *h, uint64_t *cursor, tha_obj_t *out,
                         size_t n);
/* build_ext.py: tha_heap_touch of len bytes at first + stride * index[i]
 * (index NULL: i) for i < n, spans the caller checked (tha_heap_touch_range);
 * the count done, *rc the first failure */
size_t tha_py_touch_each(tha_heap_t *h, uintptr_t first, size_t stride, size_t len,
                         const uint64_t *index, size_t n, int *rc);
/* build_ext.py: heap.store_many(): value j (or, with tstride, the address
 * of element values[j] at tfirst) into the field at off of element index[j] */
int tha_py_store_each(tha_heap_t *h, uintptr_t first, size_t stride, size_t off,
                      size_t len, const uint64_t *index, size_t n, uintptr_t values,
                      uintptr_t tfirst, size_t tstride);
/* build_ext.py: the first j with v[j] >= limit (UINT64_MAX too unless
 * null_ok), or n */
size_t tha_py_first_over(const uint64_t *v, size_t n, uint64_t limit, int null_ok);

#define THA_MAX_ROOTS ...
int tha_root_set(tha_heap_t *h, const char *name, const void *p);
int tha_root_get(const tha_heap_t *h, const char *name, void **p);
int tha_root_bind(tha_heap_t *h, const char *name, void *const *where);
#define THA_ROOT_NAME_MAX ...
int tha_heap_mirror_extern(tha_heap_t *h, const char *name, uint32_t type_id);
int tha_root_next(const tha_heap_t *h, uint32_t *cursor, const char **name,
                  void **p);

typedef struct tha_stats {
    uint64_t capacity;
    uint64_t committed;
    uint64_t top;
    uint64_t live_objects;
    uint64_t live_bytes;
    uint64_t dirty_blocks;
    uint64_t seq;
    uint64_t epoch;
    uint64_t lineage;
    uint64_t frames_encoded, bytes_encoded;
    uint64_t frames_applied, bytes_applied;
    int tracking;
    uint64_t same_address;
} tha_stats_t;

int tha_heap_stats(const tha_heap_t *h, tha_stats_t *out);
int tha_heap_check(tha_heap_t *h);

/* ---- type checks ---- */
int tha_heap_check_types(tha_heap_t *h);
#define THA_DEBUG_TYPES ...
int tha_heap_set_debug(tha_heap_t *h, unsigned flags);
typedef struct tha_lint {
    uint64_t offset;
    uint64_t object;
    uint32_t type_id;
    uint32_t element;
    uint32_t at;
    uint32_t unused;
    uint64_t value;
    char what[224];
} tha_lint_t;
int tha_heap_lint(const tha_heap_t *h, tha_lint_t *out, size_t cap, size_t *n);

/* ---- reachability ---- */
typedef struct tha_leak {
    uint64_t offset;
    uint32_t type_id;
    uint32_t count;
    uint64_t bytes;
} tha_leak_t;

int tha_leaks(tha_heap_t *h, tha_leak_t *out, size_t cap, size_t *n);
int tha_collect(tha_heap_t *h, uint64_t *bytes_freed);
int tha_heap_dangling(const tha_heap_t *h, uint64_t *slot, uint64_t *target);

/* ---- frames ---- */
enum tha_frame_kind { THA_FRAME_SNAPSHOT, THA_FRAME_DELTA, ... };

#define THA_FRAME_VERSION ...
#define THA_FRAME_HEADER_SIZE ...

typedef struct tha_frame_info {
    uint32_t kind;
    uint32_t version;
    uint64_t fingerprint;
    uint64_t lineage;
    uint64_t epoch;
    uint64_t seq;
    uint64_t capacity;
    uint64_t top;
    uint64_t length;
    uint32_t nruns;
    uint64_t nblocks;
    uint64_t base;
} tha_frame_info_t;

int tha_heap_frame_size(tha_heap_t *h, int kind, size_t *size);
int tha_heap_encode(tha_heap_t *h, int kind, void *buf, size_t cap,
                    size_t *len);
int tha_heap_apply(tha_heap_t *h, const void *frame, size_t len);
int tha_frame_info(const void *frame, size_t len, tha_frame_info_t *out);
int tha_frame_schema(const void *frame, size_t len, tha_schema_t **out,
                     char *msg, size_t msgcap);

uint32_t tha_crc32c(uint32_t crc, const void *buf, size_t len);

int tha_heap_set_epoch(tha_heap_t *h, uint64_t epoch);
int tha_set_threads(int n);
uint64_t tha_heap_epoch_start(const tha_heap_t *h);
typedef struct tha_epoch_info { uint64_t epoch, start_seq, id; } tha_epoch_info_t;
size_t tha_heap_history(const tha_heap_t *h, tha_epoch_info_t *out, size_t cap);

/* ---- durability (checkpoint.c, log.c, load.c) ---- */
#define THA_FILE_VERSION ...
#define THA_LOG_FSYNC_ALWAYS ...
#define THA_LOG_FSYNC_NEVER ...
typedef void (*tha_progress_fn)(void *ctx, uint64_t done, uint64_t total);
int tha_heap_checkpoint(tha_heap_t *h, const char *path,
                        tha_progress_fn progress, void *ctx);
typedef struct tha_checkpoint_info {
    uint32_t version;
    uint64_t fingerprint;
    uint64_t lineage;
    uint64_t epoch;
    uint64_t seq;
    uint64_t capacity;
    uint64_t top;
    uint64_t segments;
    uint64_t file_bytes;
    uint64_t base;
} tha_checkpoint_info_t;
int tha_checkpoint_info(const char *path, tha_checkpoint_info_t *out,
                        tha_schema_t **schema, char *msg, size_t msgcap);
typedef struct tha_load_options {
    tha_schema_t *schema;
    int tracking;
    const char *log;
    tha_progress_fn progress;
    void *progress_ctx;
    int check;
} tha_load_options_t;
typedef struct tha_load_report {
    uint64_t checkpoint_seq;
    uint64_t seq;
    uint64_t frames_applied;
    uint64_t frames_skipped;
    uint64_t log_end;
    uint64_t log_size;
    int stop_code;
    uint64_t stop_offset;
    uint64_t stop_seq;
    char msg[256];
} tha_load_report_t;
int tha_heap_load(tha_heap_t **out, const char *path,
                  const tha_load_options_t *opt, tha_load_report_t *report);
int tha_heap_attach_log(tha_heap_t *h, const char *path, int64_t fsync_ms);
int tha_heap_detach_log(tha_heap_t *h);
int tha_heap_sync_log(tha_heap_t *h);
int tha_heap_log_policy(const tha_heap_t *h, int64_t *fsync_ms);
int tha_heap_compact(tha_heap_t *h, const char *path,
                     tha_progress_fn progress, void *ctx);
extern "Python" void tha_py_progress(void *ctx, uint64_t done, uint64_t total);

/* ---- replication session ---- */
typedef ... tha_session_t;
typedef ... tha_backlog_t;
typedef ... tha_reserve_t;

#define THA_PROTOCOL_VERSION ...
#define THA_MAC_SIZE ...

enum tha_role { THA_ROLE_ACTIVE, THA_ROLE_STANDBY, ... };
enum tha_ack { THA_ACK_NONE, THA_ACK_RECEIVED, THA_ACK_APPLIED, THA_ACK_PERSISTED, ... };

typedef struct tha_mac_part { const void *data; size_t len; } tha_mac_part_t;
typedef void (*tha_mac_fn)(void *ctx, const uint8_t *key, size_t key_len,
                           const tha_mac_part_t *parts, size_t nparts, uint8_t *out);
#define THA_HANDSHAKE_MAX ...

typedef struct tha_session_config {
    int role;
    uint64_t node_id;
    const void *secret;
    size_t secret_len;
    tha_mac_fn mac;
    void *mac_ctx;
    uint64_t heartbeat_ms;
    uint64_t timeout_ms;
    uint32_t chunk_bytes;
    uint64_t max_message;
    uint64_t min_epoch;
    tha_reserve_t *reserve;
    const tha_schema_t *bindings;
} tha_session_config_t;

enum tha_event_type {
    THA_EV_READY, THA_EV_BULK_BEGIN, THA_EV_BULK_PROGRESS, THA_EV_BULK_DONE,
    THA_EV_APPLIED, THA_EV_ACK, THA_EV_FENCED, THA_EV_REFUSED, THA_EV_ERROR,
    THA_EV_TIMEOUT, THA_EV_HEARTBEAT, ...
};

typedef struct tha_event {
    int type;
    int code;
    uint64_t seq;
    uint64_t epoch;
    uint64_t a, b;
    char msg[256];
} tha_event_t;

typedef struct tha_session_status {
    int role;
    int state;
    uint64_t peer_node;
    uint64_t peer_seq;
    uint64_t sent_seq;
    uint64_t acked[4];
    uint64_t bytes_in, bytes_out;
    uint64_t bulk_done, bulk_total;
    uint64_t last_heard_ms;
} tha_session_status_t;

int tha_backlog_create(tha_backlog_t **out, uint64_t max_bytes);
void tha_backlog_destroy(tha_backlog_t *b);
int tha_backlog_push(tha_backlog_t *b, const void *frame, size_t len);
int tha_backlog_encode(tha_backlog_t *b, tha_heap_t *h, uint64_t *seq,
                       size_t *len);
int tha_backlog_settle(tha_backlog_t *b);
int tha_backlog_range(const tha_backlog_t *b, uint64_t *first_seq,
                      uint64_t *last_seq, uint64_t *bytes);
int tha_reserve_create(tha_reserve_t **out, size_t bytes);
void tha_reserve_destroy(tha_reserve_t *r);
size_t tha_reserve_bytes(const tha_reserve_t *r);
int tha_session_create(tha_session_t **out, const tha_session_config_t *cfg,
                       tha_heap_t *heap, tha_backlog_t *backlog);
void tha_session_destroy(tha_session_t *s);
const char *tha_session_errmsg(const tha_session_t *s);
int tha_session_start(tha_session_t *s, uint64_t now_ms);
int tha_session_feed(tha_session_t *s, const void *data, size_t len,
                     uint64_t now_ms);
int tha_session_output(tha_session_t *s, const void **data, size_t *len);
int tha_session_advance(tha_session_t *s, size_t n);
int tha_session_recv_buffer(tha_session_t *s, void **buf, size_t *cap);
int tha_session_received(tha_session_t *s, size_t n, uint64_t now_ms);
int tha_net_send_output(tha_session_t *s, int fd, size_t max_item, size_t *sent);
int tha_session_tick(tha_session_t *s, uint64_t now_ms);
int tha_session_pump(tha_session_t *s, int ack);
int tha_session_event(tha_session_t *s, tha_event_t *ev);
tha_heap_t *tha_session_take_heap(tha_session_t *s);
int tha_session_persisted(tha_session_t *s, uint64_t seq);
int tha_session_fence(tha_session_t *s, uint64_t epoch);
int tha_session_status(const tha_session_t *s, tha_session_status_t *out);

/* ---- native driver: blocking TCP (net.c) ---- */
typedef ... tha_net_t;

typedef struct tha_net_options {
    const void *secret;
    size_t secret_len;
    tha_mac_fn mac;
    void *mac_ctx;
    uint64_t node_id;
    uint64_t heartbeat_ms;
    uint64_t timeout_ms;
    uint64_t open_timeout_ms;
    uint64_t backlog_bytes;
    void (*on_event)(void *ctx, const tha_event_t *ev);
    void *event_ctx;
} tha_net_options_t;

int tha_net_active_open(tha_net_t **out, tha_heap_t *heap, const char *host,
                        uint16_t port, const tha_net_options_t *opt);
int tha_net_reconnect(tha_net_t *n);
int tha_net_sync(tha_net_t *n, int ack, uint32_t timeout_ms, uint64_t *seq);
int tha_net_poll(tha_net_t *n, uint32_t wait_ms);
int tha_net_standby_listen(tha_net_t **out, tha_heap_t *heap,
                           const char *host, uint16_t *port,
                           const tha_net_options_t *opt);
int tha_net_standby_accept(tha_net_t *n, uint32_t timeout_ms);
int tha_net_standby_serve(tha_net_t *n, uint32_t timeout_ms);
tha_heap_t *tha_net_heap(tha_net_t *n, int take);
const char *tha_net_errmsg(const tha_net_t *n);
void tha_net_close(tha_net_t *n);

/* the driver's HMAC-SHA256: OpenSSL's, compiled into the extension when
 * build_ext.py finds its headers (tha_py_have_openssl), else Python's
 * (tha_py_mac in tha/replication/connection.py) */
extern "Python" void tha_py_mac(void *ctx, const uint8_t *key, size_t key_len,
                                const tha_mac_part_t *parts, size_t nparts, uint8_t *out);
extern const int tha_py_have_openssl;
void tha_py_openssl_mac(void *ctx, const uint8_t *key, size_t key_len,
                        const tha_mac_part_t *parts, size_t nparts, uint8_t *out);

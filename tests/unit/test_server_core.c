/* Unit tests of the daemon's pieces that need no HTTP: the fair-share queue, the job store,
 * request parsing, API keys, config parsing and the artifact store. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifacts.h"
#include "auth.h"
#include "config.h"
#include "fd_limit.h"
#include "job.h"
#include "job_checks.h"
#include "loco_test.h"
#include "queue.h"
#include "request.h"
#include "store.h"
#include "store_test_util.h"

TEST(queue_round_robin_between_keys) {
    locod_queue *q = locod_queue_create();
    char id[48];
    locod_queue_push(q, "a1", "alice");
    locod_queue_push(q, "a2", "alice");
    locod_queue_push(q, "a3", "alice");
    locod_queue_push(q, "b1", "bob");
    locod_queue_push(q, "c1", "carol");
    CHECK(locod_queue_size(q) == 5);
    CHECK(locod_queue_position(q, "a1") == 0);
    CHECK(locod_queue_position(q, "b1") == 1);
    CHECK(locod_queue_position(q, "c1") == 2);
    CHECK(locod_queue_position(q, "a2") == 3);
    CHECK(locod_queue_position(q, "a3") == 4);
    const char *want[] = {"a1", "b1", "c1", "a2", "a3"};
    for (int i = 0; i < 5; i++) {
        CHECK(locod_queue_pop(q, id) == 1);
        CHECK_MSG(strcmp(id, want[i]) == 0, "pop %d gave %s", i, id);
    }
    CHECK(locod_queue_pop(q, id) == 0);
    locod_queue_destroy(q);
}

TEST(queue_positions_match_dispatch_order) {
    locod_queue *q = locod_queue_create();
    const char *keys[] = {"k0", "k1", "k2"};
    char ids[30][8];
    for (int i = 0; i < 30; i++) {
        snprintf(ids[i], sizeof ids[i], "j%d", i);
        locod_queue_push(q, ids[i], keys[(i * 7 + i / 5) % 3]);
    }
    char id[48];
    CHECK(locod_queue_pop(q, id) == 1); /* move the ring pointer */
    int pos[30];
    for (int i = 0; i < 30; i++) pos[i] = locod_queue_position(q, ids[i]);
    for (int n = 0; locod_queue_pop(q, id); n++) {
        int i = atoi(id + 1);
        CHECK_MSG(pos[i] == n, "%s predicted %d, dispatched %d", id, pos[i], n);
    }
    locod_queue_destroy(q);
}

/* Positions come from an index rebuilt after each change: interleave every kind of change with
 * queries (so a stale index would be read) and check that the positions stay a permutation of
 * 0..size-1 and, at the end, the dispatch order. */
TEST(queue_positions_stay_right_across_changes) {
    locod_queue *q = locod_queue_create();
    const char *keys[] = {"k0", "k1", "k2", "k3"};
    char ids[400][8];
    int queued[400] = {0}, n_ids = 0;
    unsigned rng = 12345;
    char id[48];
    for (int op = 0; op < 400; op++) {
        rng = rng * 1103515245u + 12345u;
        unsigned r = (rng >> 16) % 10;
        if (r < 6 || locod_queue_size(q) == 0) {
            snprintf(ids[n_ids], sizeof ids[n_ids], "j%d", n_ids);
            CHECK(locod_queue_push(q, ids[n_ids], keys[(rng >> 8) % 4]) == 0);
            queued[n_ids++] = 1;
        } else if (r < 8) {
            CHECK(locod_queue_pop(q, id) == 1);
            queued[atoi(id + 1)] = 0;
        } else {
            int victim = (int)((rng >> 4) % (unsigned)n_ids);
            CHECK(locod_queue_remove(q, ids[victim]) == queued[victim]);
            queued[victim] = 0;
        }
        int seen[400] = {0}, size = locod_queue_size(q);
        for (int i = 0; i < n_ids; i++) {
            int pos = locod_queue_position(q, ids[i]);
            CHECK_MSG(queued[i] ? pos >= 0 && pos < size && !seen[pos]++ : pos == -1, "op %d: %s at %d of %d", op,
                      ids[i], pos, size);
        }
    }
    int pos[400];
    for (int i = 0; i < n_ids; i++) pos[i] = locod_queue_position(q, ids[i]);
    for (int n = 0; locod_queue_pop(q, id); n++) {
        int i = atoi(id + 1);
        CHECK_MSG(pos[i] == n, "%s predicted %d, dispatched %d", id, pos[i], n);
    }
    CHECK(locod_queue_position(q, "j0") == -1);
    locod_queue_destroy(q);
}

TEST(queue_remove) {
    locod_queue *q = locod_queue_create();
    locod_queue_push(q, "x", "k");
    locod_queue_push(q, "y", "k");
    CHECK(locod_queue_remove(q, "x") == 1);
    CHECK(locod_queue_remove(q, "x") == 0);
    CHECK(locod_queue_position(q, "y") == 0);
    CHECK(locod_queue_key_size(q, "k") == 1);
    locod_queue_destroy(q);
}

static int parse(const char *text, loco_job_request *req, loco_proto_error *e) {
    json_t *j = json_loads(text, 0, NULL);
    if (!j) return -2;
    loco_proto_limits lim;
    loco_proto_limits_init(&lim);
    lim.max_steps = 50;
    lim.max_prompt_chars = 20;
    int rc = loco_job_request_parse(j, &lim, 42, req, e);
    json_decref(j);
    return rc;
}

TEST(request_generate_defaults_and_normalisation) {
    loco_job_request r;
    loco_proto_error e;
    CHECK(parse("{\"kind\":\"generate\",\"model\":\"sd1-tiny\",\"params\":{\"prompt\":\"a cat\"}}", &r, &e) == 0);
    CHECK(r.kind == LOCO_JOB_GENERATE && strcmp(r.model, "sd1-tiny") == 0);
    CHECK(json_integer_value(json_object_get(r.params, "seed")) == 42);
    CHECK(json_integer_value(json_object_get(r.params, "steps")) == 50);
    CHECK(json_integer_value(json_object_get(r.params, "batch")) == 1);
    loco_generate_spec g;
    CHECK(loco_generate_spec_from_json(r.params, &g, &e) == 0);
    CHECK(strcmp(g.prompt, "a cat") == 0 && g.seed == 42 && g.width == 0 && g.karras == -1);
    loco_job_request_release(&r);
}

TEST(request_errors_name_the_field) {
    loco_job_request r;
    loco_proto_error e;
    struct {
        const char *body, *pointer, *code;
    } cases[] = {
        {"{\"kind\":\"generate\",\"model\":\"m\",\"params\":{\"prompt\":\"a\",\"steps\":\"4\"}}", "/params/steps",
         "invalid_type"},
        {"{\"kind\":\"generate\",\"model\":\"m\",\"params\":{\"prompt\":\"a\",\"steps\":51}}", "/params/steps",
         "out_of_range"},
        {"{\"kind\":\"generate\",\"model\":\"m\",\"params\":{\"prompt\":\"a\",\"width\":12}}", "/params/width",
         "invalid_value"},
        {"{\"kind\":\"generate\",\"model\":\"m\",\"params\":{\"prompt\":\"aaaaaaaaaaaaaaaaaaaaaaaaa\"}}",
         "/params/prompt", "out_of_range"},
        {"{\"kind\":\"generate\",\"model\":\"m\",\"params\":{}}", "/params/prompt", "missing_field"},
        {"{\"kind\":\"generate\",\"model\":\"../x\"}", "/model", "invalid_value"},
        {"{\"kind\":\"nope\",\"model\":\"m\"}", "/kind", "invalid_value"},
        {"{\"kind\":\"generate\",\"model\":\"m\",\"x\":1}", "/x", "unknown_field"},
        {"{\"kind\":\"trace\",\"model\":\"m\",\"params\":{\"prompt\":\"a cat\",\"subject\":\"dog\"}}",
         "/params/subject", "invalid_value"},
        {"{\"kind\":\"localize\",\"model\":\"m\",\"params\":{\"prompts\":[\"a\"],\"altered_prompts\":[\"b\",\"c\"]}}",
         "/params/altered_prompts", "invalid_value"},
        {"{\"kind\":\"edit\",\"model\":\"m\",\"params\":{\"method\":\"neuron\"}}", "/params/prompts", "missing_field"},
        /* each edit method refuses the fields of the others */
        {"{\"kind\":\"edit\",\"model\":\"m\",\"params\":{\"method\":\"neuron\",\"concept\":\"x\",\"target\":\"y\"}}",
         "/params/concept", "unknown_field"},
        {"{\"kind\":\"edit\",\"model\":\"m\",\"params\":{\"method\":\"locoedit\",\"concept\":\"x\",\"target\":\"y\","
         "\"layers\":[1,1]}}",
         "/params/layers/1", "invalid_value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        loco_proto_error_clear(&e);
        int rc = parse(cases[i].body, &r, &e);
        loco_job_request_release(&r);
        CHECK_MSG(rc == -1, "case %zu accepted", i);
        CHECK_MSG(strcmp(e.pointer, cases[i].pointer) == 0, "case %zu pointer %s", i, e.pointer);
        CHECK_MSG(strcmp(e.code, cases[i].code) == 0, "case %zu code %s (%s)", i, e.code, e.detail);
        CHECK(e.detail[0] != 0);
    }
}

/* One generate request (params as JSON) against a model's published info: 0 when accepted, else
 * -1 with the refusal's pointer in `pointer` ("(detail lacks the needle)" unless its detail
 * mentions `needle`). */
static int check_generate(const char *info, const char *params, const char *needle, char *pointer, size_t n) {
    char body[512];
    snprintf(body, sizeof body, "{\"kind\":\"generate\",\"model\":\"m\",\"params\":%s}", params);
    locod_model md;
    memset(&md, 0, sizeof md);
    snprintf(md.name, sizeof md.name, "m");
    md.info = json_loads(info, 0, NULL);
    loco_job_request r;
    loco_proto_error e;
    loco_proto_error_clear(&e);
    int rc = -1;
    snprintf(pointer, n, "(request did not parse)");
    if (md.info && parse(body, &r, &e) == 0) {
        rc = locod_check_job_for_model(&md, &r, &e);
        snprintf(pointer, n, "%s", strstr(e.detail, needle) ? e.pointer : "(detail lacks the needle)");
        loco_job_request_release(&r);
    }
    json_decref(md.info);
    return rc;
}

/* The model's default scheduler as the worker publishes it (null when the model names a class
 * loco lacks) decides before queueing: a job naming no scheduler is refused then, and Karras
 * sigmas only go with euler and dpmpp_2m, the request's scheduler or the model's. */
TEST(job_checks_scheduler_against_the_model) {
    const char *lms = "{\"default_scheduler\":null,\"scheduler_class\":\"LMSDiscreteScheduler\"}";
    const char *pndm = "{\"default_scheduler\":\"pndm\",\"scheduler_class\":\"PNDMScheduler\"}";
    char p[160];
    CHECK(check_generate(lms, "{\"prompt\":\"a\"}", "LMSDiscreteScheduler", p, sizeof p) == -1);
    CHECK_MSG(!strcmp(p, "/params/scheduler"), "%s", p);
    CHECK(check_generate(lms, "{\"prompt\":\"a\",\"scheduler\":\"euler\"}", "", p, sizeof p) == 0);
    CHECK(check_generate(lms, "{\"prompt\":\"a\",\"scheduler\":\"ddim\",\"karras\":true}", "ddim", p, sizeof p) == -1);
    CHECK_MSG(!strcmp(p, "/params/karras"), "%s", p);
    CHECK(check_generate(lms, "{\"prompt\":\"a\",\"scheduler\":\"dpmpp_2m\",\"karras\":true}", "", p, sizeof p) == 0);
    CHECK(check_generate(pndm, "{\"prompt\":\"a\"}", "", p, sizeof p) == 0);
    CHECK(check_generate(pndm, "{\"prompt\":\"a\",\"karras\":true}", "pndm", p, sizeof p) == -1);
    CHECK_MSG(!strcmp(p, "/params/karras"), "%s", p);
    CHECK(check_generate(pndm, "{\"prompt\":\"a\",\"scheduler\":\"euler\",\"karras\":true}", "", p, sizeof p) == 0);
}

TEST(names_reject_paths) {
    CHECK(loco_name_valid("sd1-tiny"));
    CHECK(loco_name_valid("sd-xl_1.0+edit"));
    CHECK(!loco_name_valid(""));
    CHECK(!loco_name_valid("../etc"));
    CHECK(!loco_name_valid("a/b"));
    CHECK(!loco_name_valid(".hidden"));
    CHECK(!loco_name_valid("a..b"));
}

TEST(job_enums_round_trip) {
    for (int k = 0; k < LOCO_JOB_KIND_COUNT; k++) {
        loco_job_kind o;
        CHECK(loco_job_kind_from_name(loco_job_kind_name((loco_job_kind)k), &o) == 0 && o == (loco_job_kind)k);
    }
    for (int s = 0; s < LOCO_JOB_STATE_COUNT; s++) {
        loco_job_state o;
        CHECK(loco_job_state_from_name(loco_job_state_name((loco_job_state)s), &o) == 0 && o == (loco_job_state)s);
    }
    CHECK(loco_job_state_is_terminal(LOCO_JOB_CANCELLED) && !loco_job_state_is_terminal(LOCO_JOB_RUNNING));
}

TEST(auth_hashed_keys) {
    locod_config c;
    locod_config_init(&c);
    const locod_key *k = NULL;
    CHECK(locod_auth_check(&c, NULL, &k) == LOCOD_AUTH_OK && k == NULL); /* open mode */
    locod_key keys[2];
    memset(keys, 0, sizeof keys);
    snprintf(keys[0].id, sizeof keys[0].id, "alice");
    snprintf(keys[1].id, sizeof keys[1].id, "bob");
    locod_sha256("alice-key", 9, keys[0].sha256);
    locod_sha256("bob-key", 7, keys[1].sha256);
    c.keys = keys;
    c.n_keys = 2;
    CHECK(locod_auth_check(&c, NULL, &k) == LOCOD_AUTH_MISSING);
    CHECK(locod_auth_check(&c, "Basic abc", &k) == LOCOD_AUTH_MALFORMED);
    CHECK(locod_auth_check(&c, "Bearer ", &k) == LOCOD_AUTH_MALFORMED);
    CHECK(locod_auth_check(&c, "Bearer alice-kez", &k) == LOCOD_AUTH_INVALID);
    CHECK(locod_auth_check(&c, "Bearer bob-key", &k) == LOCOD_AUTH_OK && strcmp(k->id, "bob") == 0);
    CHECK(locod_auth_check(&c, "bearer alice-key", &k) == LOCOD_AUTH_OK && strcmp(k->id, "alice") == 0);
    c.keys = NULL;
    c.n_keys = 0;
    locod_config_free(&c);
}

TEST(config_parse_and_errors) {
    locod_config c;
    locod_config_init(&c);
    loco_err err;
    const char *good = "{\"listen\":\"[::1]:9000\",\"data_dir\":\"d\",\"model_roots\":[\"m\"],"
                       "\"models\":{\"x\":{\"path\":\"/abs/x\"}},\"load_at_start\":[\"x\"],"
                       "\"keys\":[{\"id\":\"k\",\"sha256\":\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                       "\",\"admin\":true}],\"limits\":{\"max_steps\":20},\"queue\":{\"max_queued\":7}}";
    CHECK(locod_config_parse(&c, good, "/etc/loco", &err) == LOCO_OK);
    CHECK(strcmp(c.listen_host, "::1") == 0 && c.listen_port == 9000);
    CHECK(strcmp(c.data_dir, "/etc/loco/d") == 0 && strcmp(c.model_roots[0], "/etc/loco/m") == 0);
    CHECK(strcmp(c.models[0].path, "/abs/x") == 0 && c.keys[0].admin == 1 && c.max_queue == 7);
    CHECK(c.limits.max_steps == 20 && c.limits.default_steps == 20);
    CHECK(c.tombstone_retention_s == 30 * 24 * 3600); /* the documented default */
    CHECK(c.max_connections == 1024 && c.max_sse_streams == 512); /* derived: half the connections */
    CHECK(c.max_connections_per_ip == 768);                        /* derived: 3/4, above the stream cap */
    CHECK(locod_config_set_listen(&c, "127.0.0.1:0", &err) == LOCO_OK && c.listen_port == 0);
    CHECK(locod_config_set_listen(&c, "nohost", &err) != LOCO_OK);
    locod_config_free(&c);
    /* the stream cap follows max_connections unless given, and must stay below it */
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10}}", ".", &err) == LOCO_OK);
    CHECK(c.max_sse_streams == 5);
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10,\"max_sse_streams\":9}}", ".", &err) == LOCO_OK);
    CHECK(c.max_sse_streams == 9);
    locod_config_free(&c);
    /* one client address gets 3/4 of the connections unless told otherwise, and always more than
     * the stream cap (one address holding every stream must still poll); 0 = no per-address limit */
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10}}", ".", &err) == LOCO_OK);
    CHECK(c.max_connections_per_ip == 8);
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10,\"max_sse_streams\":9}}", ".", &err) == LOCO_OK);
    CHECK(c.max_connections_per_ip == 10);
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10,\"max_connections_per_ip\":0}}", ".", &err) == LOCO_OK);
    CHECK(c.max_connections_per_ip == 0);
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":10,\"max_connections_per_ip\":10}}", ".", &err) == LOCO_OK);
    CHECK(c.max_connections_per_ip == 10);
    locod_config_free(&c);
    const char *bad[] = {"{\"limits\":{\"max_connections\":10,\"max_sse_streams\":10}}",
                         "{\"limits\":{\"max_connections\":10,\"max_connections_per_ip\":11}}",
                         "{\"limits\":{\"max_connections\":10,\"max_connections_per_ip\":5}}", /* = stream cap */
                         "{\"limits\":{\"max_connections_per_ip\":-1}}",
                         "{\"limits\":{\"max_sse_streams\":1024}}", "{\"lisen\":\"x\"}", "{\"limits\":{\"max_steps\":0}}", "{\"keys\":[{\"id\":\"k\",\"sha256\":\"zz\"}]}",
                         "{\"device\":\"tpu\"}", "[1]", "{\"models\":{\"../x\":{\"path\":\"p\"}}}",
                         /* what the loader refuses, refused at start-up: config_dir on a folder,
                          * variant on a single file */
                         "{\"models\":{\"x\":{\"path\":\"/\",\"config_dir\":\"/\"}}}",
                         "{\"models\":{\"x\":{\"path\":\"/etc/passwd\",\"variant\":\"fp16\"}}}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        locod_config_init(&c);
        CHECK_MSG(locod_config_parse(&c, bad[i], ".", &err) != LOCO_OK, "accepted %s", bad[i]);
        CHECK(strstr(err.msg, "config") != NULL);
        locod_config_free(&c);
    }
}

/* Lowering max_connections to fit the open-file limit: what follows it follows, explicit values
 * are cut only when they no longer fit. */
TEST(config_lower_connections) {
    locod_config c;
    loco_err err;
    locod_config_init(&c);
    locod_config_lower_connections(&c, 16);
    CHECK(c.max_connections == 16 && c.max_sse_streams == 8 && c.max_connections_per_ip == 12);
    locod_config_lower_connections(&c, 100); /* never raised */
    CHECK(c.max_connections == 16);
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_connections\":100,\"max_sse_streams\":6,"
                                 "\"max_connections_per_ip\":100}}", ".", &err) == LOCO_OK);
    locod_config_lower_connections(&c, 16);
    CHECK(c.max_sse_streams == 6 && c.max_connections_per_ip == 16);
    locod_config_lower_connections(&c, 6);
    CHECK(c.max_sse_streams == 3); /* must stay below max_connections */
    locod_config_free(&c);
    locod_config_init(&c);
    CHECK(locod_config_parse(&c, "{\"limits\":{\"max_sse_streams\":0,\"max_connections_per_ip\":0}}", ".", &err) ==
          LOCO_OK);
    locod_config_lower_connections(&c, 16);
    CHECK(c.max_sse_streams == 0 && c.max_connections_per_ip == 0); /* off stays off */
    locod_config_free(&c);
}

/* The open-file plan: raise the soft limit as far as needed and the hard limit allows, never
 * lower it, and fit the connections under it when the hard limit is too low. */
TEST(fd_plan_fits_connections_to_the_open_file_limit) {
    const uint64_t need = locod_fd_needed(1024);
    CHECK(need == 1024 * LOCOD_FDS_PER_CONNECTION + LOCOD_FD_RESERVE);
    locod_fd_plan p = locod_fd_plan_for(1024, 1048576, 1024); /* the usual soft limit: raised */
    CHECK(p.soft == need && p.max_connections == 1024);
    p = locod_fd_plan_for(1024, UINT64_MAX, 1024); /* unlimited hard limit */
    CHECK(p.soft == need && p.max_connections == 1024);
    p = locod_fd_plan_for(1 << 20, 1 << 20, 1024); /* already enough: untouched */
    CHECK(p.soft == 1 << 20 && p.max_connections == 1024);
    p = locod_fd_plan_for(64, 64, 100); /* hard limit too low: (64 - reserve) / per connection */
    CHECK(p.soft == 64 && p.max_connections == (64 - LOCOD_FD_RESERVE) / LOCOD_FDS_PER_CONNECTION);
    p = locod_fd_plan_for(64, 200, 100); /* raised to the hard limit, and fewer connections */
    CHECK(p.soft == 200 && p.max_connections == (200 - LOCOD_FD_RESERVE) / LOCOD_FDS_PER_CONNECTION);
    p = locod_fd_plan_for(16, 16, 100); /* hopeless: at least one, the caller refuses to start */
    CHECK(p.max_connections == 1);
}

static char tmpdir[256];

static void make_tmp(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/loco-unit-XXXXXX");
    if (!mkdtemp(tmpdir)) abort();
}

static void count_key(void *ctx, const char *key, int n) { *(int *)ctx += n; }

/* The job store of a fresh temporary folder (its path in db, for tests that reopen it). */
static void tmp_store_path(char *db, size_t n) { store_test_tmp_path("/tmp/loco-unit", tmpdir, sizeof tmpdir, db, n); }


TEST(store_lifecycle_and_terminal_states) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    locod_job_row r;
    store_test_job_row(&r, 1, LOCO_JOB_GENERATE, "alice");
    json_object_set_new(r.params, "prompt", json_string("a cat"));
    r.created_ms = 1000;
    snprintf(r.idem_key, sizeof r.idem_key, "idem-1");
    snprintf(r.req_hash, sizeof r.req_hash, "h");
    CHECK(locod_store_insert(s, &r, &err) == LOCO_OK && r.seq > 0);
    CHECK(locod_store_insert(s, &r, &err) != LOCO_OK); /* same id */
    locod_job_row g;
    CHECK(locod_store_find_idempotent(s, "alice", "idem-1", &g, &err) == 1 && strcmp(g.id, r.id) == 0);
    locod_job_row_free(&g);
    CHECK(locod_store_find_idempotent(s, "bob", "idem-1", &g, &err) == 0);
    CHECK(locod_store_mark_running(s, r.id, 2000, &err) == 1);
    CHECK(locod_store_mark_running(s, r.id, 2000, &err) == 0);
    int pending = 0;
    locod_store_pending_per_key(s, count_key, &pending);
    CHECK(pending == 1);
    json_t *arts = json_pack("[{s:s, s:i, s:s}]", "sha256", "ab", "size", 3, "media_type", "image/png");
    json_t *res = json_object();
    CHECK(locod_store_finish(s, r.id, LOCO_JOB_SUCCEEDED, 3000, 5000, NULL, NULL, 0, res, arts, &err) == 1);
    json_decref(res);
    CHECK(locod_store_finish(s, r.id, LOCO_JOB_FAILED, 3500, 5000, "x", "y", 0, NULL, NULL, &err) == 0);
    CHECK(locod_store_get(s, r.id, &g, &err) == 1 && g.state == LOCO_JOB_SUCCEEDED && g.attempts == 1);
    locod_job_row_free(&g);
    uint64_t size;
    char mt[64];
    CHECK(locod_store_artifact(s, "ab", &size, mt, sizeof mt) == 1 && size == 3 && strcmp(mt, "image/png") == 0);
    CHECK(locod_store_purge(s, 4000, NULL, NULL, &err) == 0);
    CHECK(locod_store_purge(s, 6000, NULL, NULL, &err) == 1);
    CHECK(locod_store_get(s, r.id, &g, &err) == 0 && locod_store_is_expired(s, r.id));
    CHECK(locod_store_artifact(s, "ab", &size, mt, sizeof mt) == 0);
    json_decref(arts);
    locod_job_row_free(&r);
    locod_store_close(s);
}

static void count_variant(void *ctx, const locod_variant_row *v) {
    int *n = ctx;
    if (strcmp(v->base, "m") == 0 && json_is_object(v->edit)) (*n)++;
}

static void gone_sha(void *ctx, const char *sha) { snprintf(ctx, 65, "%s", sha); }

/* A variant's delta outlives its edit job's retention for as long as the variant exists; deleting
 * the variant then releases it. */
TEST(store_variants_keep_their_delta) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    locod_job_row r;
    store_test_job_row(&r, 77, LOCO_JOB_EDIT, "k");
    r.created_ms = 1000;
    CHECK(locod_store_insert(s, &r, &err) == LOCO_OK);
    json_t *arts = json_pack("[{s:s, s:i, s:s}, {s:s, s:i, s:s}]", "sha256", "de", "size", 3, "media_type",
                             "application/octet-stream", "sha256", "re", "size", 2, "media_type", "application/json");
    CHECK(locod_store_finish(s, r.id, LOCO_JOB_SUCCEEDED, 2000, 3000, NULL, NULL, 0, NULL, arts, &err) == 1);
    locod_variant_row v;
    memset(&v, 0, sizeof v);
    snprintf(v.name, sizeof v.name, "m-edited");
    snprintf(v.base, sizeof v.base, "m");
    snprintf(v.delta_sha256, sizeof v.delta_sha256, "de");
    snprintf(v.job_id, sizeof v.job_id, "%s", r.id);
    v.edit = json_pack("{s:s}", "method", "locoedit");
    v.created_ms = 2000;
    CHECK(locod_store_variant_put(s, &v, &err) == LOCO_OK);
    int n = 0;
    CHECK(locod_store_variants_each(s, count_variant, &n, &err) == 1 && n == 1);
    char gone[65] = "";
    CHECK(locod_store_purge(s, 4000, gone_sha, gone, &err) == 1);
    uint64_t size;
    char mt[64];
    CHECK(strcmp(gone, "re") == 0); /* the report goes, the delta stays */
    CHECK(locod_store_artifact(s, "de", &size, mt, sizeof mt) == 1 && locod_store_artifact(s, "re", &size, mt, sizeof mt) == 0);
    char orphan[65];
    CHECK(locod_store_variant_delete(s, "m-edited", orphan, &err) == 1 && strcmp(orphan, "de") == 0);
    CHECK(locod_store_artifact(s, "de", &size, mt, sizeof mt) == 0);
    CHECK(locod_store_variant_delete(s, "m-edited", orphan, &err) == 0 && orphan[0] == 0);
    n = 0;
    CHECK(locod_store_variants_each(s, count_variant, &n, &err) == 0 && n == 0);
    locod_variant_row_free(&v);
    json_decref(arts);
    locod_job_row_free(&r);
    locod_store_close(s);
}

/* expired_jobs must not grow forever: tombstones older than the bound are dropped, newer ones
 * still answer "expired". */
TEST(store_prunes_old_tombstones) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    char ids[2][LOCO_JOB_ID_LEN + 1];
    for (int i = 0; i < 2; i++) {
        locod_job_row r;
        store_test_job_row(&r, 40 + i, LOCO_JOB_GENERATE, "k");
        snprintf(ids[i], sizeof ids[i], "%s", r.id);
        r.created_ms = 1000;
        CHECK(locod_store_insert(s, &r, &err) == LOCO_OK);
        CHECK(locod_store_finish(s, r.id, LOCO_JOB_FAILED, 2000, 3000 + i * 10000, "x", "y", 0, NULL, NULL, &err) == 1);
        locod_job_row_free(&r);
    }
    CHECK(locod_store_purge(s, 5000, NULL, NULL, &err) == 1);   /* ids[0], tombstone at 5000 */
    CHECK(locod_store_purge(s, 20000, NULL, NULL, &err) == 1);  /* ids[1], tombstone at 20000 */
    CHECK(locod_store_is_expired(s, ids[0]) && locod_store_is_expired(s, ids[1]));
    CHECK(locod_store_prune_tombstones(s, 5000, &err) == 0);    /* strictly older only */
    CHECK(locod_store_prune_tombstones(s, 5001, &err) == 1);
    CHECK(!locod_store_is_expired(s, ids[0]) && locod_store_is_expired(s, ids[1]));
    CHECK(locod_store_prune_tombstones(s, 5001, &err) == 0);
    locod_store_close(s);
}

TEST(store_recover_running_jobs) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    for (int i = 0; i < 3; i++) {
        locod_job_row r;
        store_test_job_row(&r, 10 + i, LOCO_JOB_GENERATE, "k");
        r.retry_on_restart = i == 1;
        CHECK(locod_store_insert(s, &r, &err) == LOCO_OK);
        if (i < 2) CHECK(locod_store_mark_running(s, r.id, 10, &err) == 1);
        locod_job_row_free(&r);
    }
    locod_store_close(s);
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    int requeued = -1;
    CHECK(locod_store_recover(s, 100, 1000, &requeued, &err) == 2 && requeued == 1);
    locod_job_row g;
    char id[40];
    snprintf(id, sizeof id, "%032x", 10);
    CHECK(locod_store_get(s, id, &g, &err) == 1 && g.state == LOCO_JOB_FAILED);
    CHECK(strcmp(g.error_code, "server_restart") == 0);
    locod_job_row_free(&g);
    snprintf(id, sizeof id, "%032x", 11);
    CHECK(locod_store_get(s, id, &g, &err) == 1 && g.state == LOCO_JOB_QUEUED && g.attempts == 1);
    locod_job_row_free(&g);
    locod_store_close(s);
}

TEST(artifacts_content_addressed) {
    make_tmp();
    char root[300], path[400];
    snprintf(root, sizeof root, "%s/artifacts", tmpdir);
    loco_err err;
    CHECK(locod_artifacts_init(root, &err) == LOCO_OK);
    char sha[65];
    CHECK(locod_artifact_put(root, "abc", 3, sha, &err) == LOCO_OK);
    CHECK(strcmp(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    CHECK(locod_artifact_id_valid(sha));
    locod_artifact_path(root, sha, path, sizeof path);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 3);
    CHECK(locod_artifact_put(root, "abc", 3, sha, &err) == LOCO_OK); /* same content again */
    CHECK(!locod_artifact_id_valid("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
    CHECK(!locod_artifact_id_valid("../../../../etc/passwd"));
    CHECK(!locod_artifact_id_valid("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0"));
    /* placing the same content again refreshes the file (a fresh mtime), and the retention
     * sweep keeps a file placed since the running job started */
    struct timespec old[2] = {{1000, 0}, {1000, 0}};
    CHECK(utimensat(AT_FDCWD, path, old, 0) == 0);
    CHECK(locod_artifact_put(root, "abc", 3, sha, &err) == LOCO_OK);
    CHECK(stat(path, &st) == 0 && st.st_mtim.tv_sec > 1000);
    int64_t started = (int64_t)st.st_mtim.tv_sec * 1000 - 5000;
    CHECK(locod_artifact_remove(root, sha, started) == 0); /* kept */
    CHECK(stat(path, &st) == 0 && st.st_size == 3);
    CHECK(utimensat(AT_FDCWD, path, old, 0) == 0);
    CHECK(locod_artifact_remove(root, sha, started) == 1); /* older than the running job: removed */
    CHECK(stat(path, &st) != 0);
    CHECK(locod_artifact_put(root, "abc", 3, sha, &err) == LOCO_OK);
    CHECK(locod_artifact_remove(root, sha, 0) == 1);
    CHECK(stat(path, &st) != 0);
    CHECK(locod_artifact_remove(root, sha, 0) == -1);
}

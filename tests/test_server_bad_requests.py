"""Bad requests each get the right 4xx as application/problem+json, and the daemon stays
healthy after every one."""
import http.client
import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import Daemon, problem, tiny_generate  # noqa: E402

KEY = "good-key-123456"
ADMIN = "admin-key-654321"
KEYS = {"user": {"key": KEY}, "admin": {"key": ADMIN, "admin": True}}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    with Daemon(tmp_path_factory.mktemp("bad"), keys=KEYS,
                extra={"cors_origins": ["https://dash.example"]}) as daemon:
        yield daemon


def gen(**params):
    b = tiny_generate()
    b["params"].update(params)
    return b


def raw(body):
    return {"data": body}


J = "application/json"
SHA = "0" * 64

# (id, method, path, body or {"data": raw}, headers, key, status, code)
CASES = [
    ("malformed-json", "POST", "/v1/jobs", raw('{"kind": "generate",'), {}, KEY, 400, "malformed_json"),
    ("not-json-at-all", "POST", "/v1/jobs", raw("kind=generate"), {}, KEY, 400, "malformed_json"),
    ("empty-body", "POST", "/v1/jobs", raw(""), {}, KEY, 400, "empty_body"),
    ("duplicate-keys", "POST", "/v1/jobs", raw('{"kind":"generate","kind":"trace","model":"sd1-tiny"}'), {}, KEY, 400,
     "malformed_json"),
    ("body-is-array", "POST", "/v1/jobs", [1, 2], {}, KEY, 422, "invalid_type"),
    ("wrong-content-type", "POST", "/v1/jobs", raw(json.dumps(tiny_generate())), {"Content-Type": "text/plain"}, KEY,
     415, "unsupported_media_type"),
    ("missing-kind", "POST", "/v1/jobs", {"model": "sd1-tiny"}, {}, KEY, 422, "missing_field"),
    ("unknown-kind", "POST", "/v1/jobs", {"kind": "train", "model": "sd1-tiny"}, {}, KEY, 422, "invalid_value"),
    ("kind-wrong-type", "POST", "/v1/jobs", {"kind": 3, "model": "sd1-tiny"}, {}, KEY, 422, "invalid_type"),
    ("unknown-top-field", "POST", "/v1/jobs", {**tiny_generate(), "priority": 9}, {}, KEY, 422, "unknown_field"),
    ("unknown-model", "POST", "/v1/jobs", {**tiny_generate(), "model": "sd9-huge"}, {}, KEY, 422, "unknown_model"),
    ("model-as-path", "POST", "/v1/jobs", {**tiny_generate(), "model": "../../etc/passwd"}, {}, KEY, 422,
     "invalid_value"),
    ("model-absolute-path", "POST", "/v1/jobs", {**tiny_generate(), "model": "/tmp/model"}, {}, KEY, 422,
     "invalid_value"),
    ("model-not-loaded", "POST", "/v1/jobs", {**tiny_generate(), "model": "sdxl-tiny"}, {}, KEY, 409,
     "model_not_loaded"),
    ("missing-prompt", "POST", "/v1/jobs", {"kind": "generate", "model": "sd1-tiny", "params": {}}, {}, KEY, 422,
     "missing_field"),
    ("prompt-wrong-type", "POST", "/v1/jobs", gen(prompt=["a", "b"]), {}, KEY, 422, "invalid_type"),
    ("prompt-too-long", "POST", "/v1/jobs", gen(prompt="x" * 501), {}, KEY, 422, "out_of_range"),
    ("steps-string", "POST", "/v1/jobs", gen(steps="4"), {}, KEY, 422, "invalid_type"),
    ("steps-float", "POST", "/v1/jobs", gen(steps=4.5), {}, KEY, 422, "invalid_type"),
    ("steps-huge", "POST", "/v1/jobs", gen(steps=10 ** 9), {}, KEY, 422, "out_of_range"),
    ("steps-zero", "POST", "/v1/jobs", gen(steps=0), {}, KEY, 422, "out_of_range"),
    ("seed-negative", "POST", "/v1/jobs", gen(seed=-1), {}, KEY, 422, "out_of_range"),
    ("seed-beyond-int64", "POST", "/v1/jobs", raw('{"kind":"generate","model":"sd1-tiny","params":'
                                                  '{"prompt":"a","seed":99999999999999999999999}}'), {}, KEY, 400,
     "malformed_json"),
    ("width-huge", "POST", "/v1/jobs", gen(width=100000), {}, KEY, 422, "out_of_range"),
    ("width-not-multiple-of-8", "POST", "/v1/jobs", gen(width=65), {}, KEY, 422, "invalid_value"),
    ("width-not-model-multiple", "POST", "/v1/jobs", gen(width=40, height=40), {}, KEY, 422, "invalid_value"),
    ("batch-huge", "POST", "/v1/jobs", gen(batch=1000), {}, KEY, 422, "out_of_range"),
    ("too-many-pixels", "POST", "/v1/jobs", gen(width=256, height=256, batch=4), {}, KEY, 422, None),
    ("guidance-nan-string", "POST", "/v1/jobs", gen(guidance_scale="NaN"), {}, KEY, 422, "invalid_type"),
    ("guidance-negative", "POST", "/v1/jobs", gen(guidance_scale=-3), {}, KEY, 422, "out_of_range"),
    ("unknown-scheduler", "POST", "/v1/jobs", gen(scheduler="lms"), {}, KEY, 422, "invalid_value"),
    ("unknown-param", "POST", "/v1/jobs", gen(sampler="euler"), {}, KEY, 422, "unknown_field"),
    ("retry-wrong-type", "POST", "/v1/jobs", {**tiny_generate(), "retry_on_restart": "yes"}, {}, KEY, 422,
     "invalid_type"),
    ("trace-unknown-site", "POST", "/v1/jobs", {"kind": "trace", "model": "sd1-tiny",
                                               "params": {"prompt": "a cat by Monet", "subject": "Monet",
                                                          "components": ["down_blocks.9.attn9"]}}, {}, KEY, 422,
     "unknown_site"),
    ("localize-mismatched-lists", "POST", "/v1/jobs", {"kind": "localize", "model": "sd1-tiny",
                                                      "params": {"prompts": ["a", "b"], "altered_prompts": ["c"]}},
     {}, KEY, 422, "invalid_value"),
    ("trace-clip-skip", "POST", "/v1/jobs", {"kind": "trace", "model": "sd1-tiny",
                                            "params": {"prompt": "a cat by Monet", "subject": "Monet", "clip_skip": 1}},
     {}, KEY, 422, "unknown_field"),
    ("localize-clip-skip", "POST", "/v1/jobs", {"kind": "localize", "model": "sd1-tiny",
                                               "params": {"prompts": ["a"], "altered_prompts": ["b"], "clip_skip": 1}},
     {}, KEY, 422, "unknown_field"),
    ("edit-layer-out-of-range", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny",
                                                    "params": {"method": "locoedit", "concept": "Monet",
                                                               "target": "a painting", "layers": [999]}}, {}, KEY,
     422, "out_of_range"),
    ("edit-unknown-method", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny",
                                                "params": {"method": "finetune", "concept": "x", "target": "y"}},
     {}, KEY, 422, "invalid_value"),
    ("edit-locoedit-layers-with-gaps", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "concept": "Monet", "layers": [1, 5]}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-neuron-one-prompt-per-set", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "neuron", "layers": [4, 5], "neurons": 4, "prompts": ["a by Monet"], "normal_prompts": ["a", "b"]}}, {}, KEY, 422,
     "out_of_range"),
    ("edit-neuron-more-neurons-than-channels", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "neuron", "layers": [4, 5], "prompts": ["a by Monet", "b by Monet"], "normal_prompts": ["a", "b"]}}, {}, KEY, 422,
     "out_of_range"),
    ("edit-neuron-concept-does-not-apply", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "neuron", "concept": "Monet", "layers": [4, 5], "neurons": 4, "prompts": ["a by Monet", "b by Monet"], "normal_prompts": ["a", "b"]}}, {}, KEY, 422,
     "unknown_field"),
    ("edit-locoedit-normal-prompts-do-not-apply", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "concept": "Monet", "normal_prompts": ["a", "b"]}}, {}, KEY, 422,
     "unknown_field"),
    ("edit-quickfix-layers-do-not-apply", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "diff_quickfix", "concept": "Monet", "layers": [3]}}, {}, KEY, 422,
     "unknown_field"),
    ("edit-quickfix-prompts-without-targets", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "diff_quickfix", "concept": "Monet", "prompts": ["a by Monet"]}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-quickfix-text-layer-out-of-range", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "diff_quickfix", "concept": "Monet", "text_layer": 50}}, {}, KEY, 422,
     "out_of_range"),
    ("edit-locoedit-needs-concept", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "layers": [4, 5]}}, {}, KEY, 422,
     "missing_field"),
    ("edit-matrices-unknown", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "concept": "Monet", "matrices": ["to_q"]}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-neuron-position-bad", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "neuron", "layers": [4, 5], "neurons": 4, "prompts": ["a by Monet", "b by Monet"], "normal_prompts": ["a", "b"], "position": "bos"}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-quickfix-encoder-the-model-lacks", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "diff_quickfix", "concept": "Monet", "encoders": "text_encoder_2"}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-neuron-position-past-the-prompt", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "neuron", "layers": [4, 5], "neurons": 4, "prompts": ["a by Monet", "b by Monet"], "normal_prompts": ["a", "b"], "position": 77}}, {}, KEY, 422,
     "out_of_range"),
    ("edit-locoedit-prompt-without-the-concept", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "concept": "Monet", "layers": [4, 5], "prompts": ["a cat"]}}, {}, KEY, 422,
     "invalid_value"),
    ("edit-lambda-for-a-matrix-left-alone", "POST", "/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": {"method": "locoedit", "concept": "Monet", "layers": [4, 5], "matrices": ["to_v"], "lambda_k": 3}}, {}, KEY, 422,
     "invalid_value"),
    ("seed-integral-but-too-large", "POST", "/v1/jobs", gen(seed=1e19), {}, KEY, 422, "out_of_range"),
    ("bad-idempotency-key", "POST", "/v1/jobs", tiny_generate(), {"Idempotency-Key": "has space"}, KEY, 400,
     "invalid_idempotency_key"),
    ("no-key", "POST", "/v1/jobs", tiny_generate(), {}, None, 401, "missing_api_key"),
    ("wrong-key", "GET", "/v1/jobs", None, {}, "not-a-real-key", 401, "invalid_api_key"),
    ("basic-auth", "GET", "/v1/jobs", None, {"Authorization": "Basic dXNlcjpwYXNz"}, None, 401,
     "malformed_authorization"),
    ("empty-bearer", "GET", "/v1/models", None, {"Authorization": "Bearer "}, None, 401, "malformed_authorization"),
    ("load-needs-admin", "POST", "/v1/models/sd2-tiny/load", None, {}, KEY, 403, "admin_required"),
    ("load-unknown-model", "POST", "/v1/models/nope/load", None, {}, ADMIN, 404, "unknown_model"),
    ("show-model-path-trick", "GET", "/v1/models/..%2F..%2Fetc", None, {}, KEY, 404, None),
    ("unknown-job", "GET", "/v1/jobs/" + "f" * 32, None, {}, KEY, 404, "unknown_job"),
    ("job-id-not-hex", "GET", "/v1/jobs/../../etc/passwd", None, {}, KEY, 404, None),
    ("cancel-unknown-job", "POST", "/v1/jobs/" + "a" * 32 + "/cancel", None, {}, KEY, 404, "unknown_job"),
    ("artifact-uppercase", "GET", "/v1/artifacts/" + "A" * 64, None, {}, KEY, 400, "invalid_artifact_id"),
    ("artifact-short", "GET", "/v1/artifacts/abc", None, {}, KEY, 400, "invalid_artifact_id"),
    ("artifact-dotdot", "GET", "/v1/artifacts/..%2F..%2Fjobs.sqlite3", None, {}, KEY, 404, "not_found"),
    ("artifact-dotdot-plain", "GET", "/v1/artifacts/...", None, {}, KEY, 400, "invalid_artifact_id"),
    ("artifact-sha-with-suffix", "GET", "/v1/artifacts/" + SHA + ".png", None, {}, KEY, 400, "invalid_artifact_id"),
    ("artifact-path-suffix", "GET", "/v1/artifacts/" + SHA + "/../x", None, {}, KEY, None, None),
    ("artifact-unknown", "GET", "/v1/artifacts/" + SHA, None, {}, KEY, 404, "unknown_artifact"),
    ("list-bad-state", "GET", "/v1/jobs?state=done", None, {}, KEY, 400, "invalid_query"),
    ("list-bad-limit", "GET", "/v1/jobs?limit=100000", None, {}, KEY, 400, "invalid_query"),
    ("list-bad-cursor", "GET", "/v1/jobs?cursor=abc", None, {}, KEY, 400, "invalid_query"),
    ("list-other-key", "GET", "/v1/jobs?key=admin", None, {}, KEY, 403, "forbidden"),
    ("method-not-allowed", "DELETE", "/v1/jobs", None, {}, KEY, 405, "method_not_allowed"),
    ("unknown-route", "GET", "/v2/everything", None, {}, KEY, 404, "not_found"),
    ("foreign-origin-post", "POST", "/v1/jobs", tiny_generate(), {"Origin": "https://evil.example"}, KEY, 403,
     "cors_origin_not_allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(d, case):
    _, method, path, body, headers, key, status, code = case
    h = dict(headers)
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    kw = {}
    if isinstance(body, dict) and set(body) == {"data"}:
        kw["data"] = body["data"]
        h.setdefault("Content-Type", J)
    elif body is not None:
        kw["data"] = json.dumps(body)
        h.setdefault("Content-Type", J)
    r = d.s.request(method, d.url(path), headers=h, timeout=30, **kw)
    if status is None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    else:
        problem(r, status, code)
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 405:
        assert "GET" in r.headers["Allow"]
    assert d.alive()


def test_integer_beyond_int64_names_the_limit(d):
    body = '{"kind":"generate","model":"sd1-tiny","params":{"prompt":"a","seed":18446744073709551615}}'
    r = d.s.post(d.url("/v1/jobs"), data=body, headers={"Content-Type": J, "Authorization": f"Bearer {KEY}"},
                 timeout=30)
    detail = problem(r, 400, "malformed_json")["detail"]
    assert "2^63" in detail and "column" in detail, detail


def test_body_too_large(d):
    big = {"kind": "generate", "model": "sd1-tiny", "params": {"prompt": "x" * 70000}}
    problem(d.post("/v1/jobs", big, key=KEY), 413, "body_too_large")
    assert d.alive()


def announce_body(d, headers, length):
    """Send a POST's headers announcing a body of `length` bytes behind 'Expect: 100-continue', and
    nothing of the body; return the head of what the server answers."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers +
                  b"Expect: 100-continue\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return head


def test_oversize_body_refused_before_it_is_sent(d):
    # a client that asks first gets the 413 instead of a 100 Continue, so it never uploads the body
    head = announce_body(d, b"Authorization: Bearer " + KEY.encode() + b"\r\n", 10_000_000)
    assert head.startswith(b"HTTP/1.1 413 "), head[:200]
    assert b"100 Continue" not in head and b"application/problem+json" in head, head[:400]
    assert d.alive()


def test_body_of_a_request_without_a_valid_key_is_never_read(d):
    # refused on its headers: only key holders make the server buffer a body
    for auth in (b"", b"Authorization: Bearer not-a-real-key\r\n"):
        head = announce_body(d, auth, 60000)
        assert head.startswith(b"HTTP/1.1 401 "), head[:200]
    assert d.alive()


def test_raw_garbage_on_the_socket(d):
    for payload in (b"\x00\x01\x02garbage\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                    b"POST /v1/jobs HTTP/1.1\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(payload)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert d.alive()


def test_cors(d):
    ok = d.s.options(d.url("/v1/jobs"), headers={"Origin": "https://dash.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    problem(d.s.options(d.url("/v1/jobs"), headers={"Origin": "https://evil.example",
                                                     "Access-Control-Request-Method": "POST"}), 403)
    r = d.get("/v1/models", key=KEY, headers={"Origin": "https://dash.example"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    r = d.get("/v1/models", key=KEY, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_no_keys_means_loopback_only(tmp_path):
    d = Daemon(tmp_path, "open")
    d.start(args=("--listen", "0.0.0.0:0"))
    try:
        assert "loopback" in d.log() and "127.0.0.1" in d.log()
        assert d.get("/v1/models").status_code == 200
    finally:
        d.stop()


def raw_get(d, path, key=None):
    """GET with the path sent verbatim (no client-side normalisation of '//')."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_empty_path_segments_never_bypass_auth(d):
    job = d.submit(tiny_generate(steps=1), key=KEY)
    jid = job["id"]
    paths = ["//v1/jobs", f"//v1/jobs/{jid}", "/v1//jobs", f"/v1//jobs/{jid}", "/v1/jobs/", f"/v1/jobs/{jid}/",
             f"/v1/jobs//{jid}", "///v1/jobs", "//v1/models", "//v1/artifacts/" + SHA, "//healthz"]
    for path in paths:
        for key in (None, "wrong-key-000000", KEY):
            status, body = raw_get(d, path, key)
            assert status in (401, 404), (path, key, status, body[:300])
            assert json.loads(body)["type"].startswith("/problems/"), (path, key, body[:300])
        assert d.alive(), path
    assert raw_get(d, f"/v1/jobs/{jid}", KEY)[0] == 200
    assert raw_get(d, f"/v1/jobs/{jid}", None)[0] == 401


def test_clip_skip_rejected_for_research_kinds(d):
    for kind, params in (("trace", {"prompt": "a cat by Monet", "subject": "Monet"}),
                         ("localize", {"prompts": ["a"], "altered_prompts": ["b"]})):
        p = problem(d.post("/v1/jobs", {"kind": kind, "model": "sd1-tiny", "params": {**params, "clip_skip": 1}},
                           key=KEY), 422)
        assert "clip_skip is not supported for trace/localize jobs" in p["detail"], p
    assert d.alive()


def test_max_pixels_counts_the_model_default_size(tmp_path):
    # sd1-tiny's default size is 64: 64 x 64 = 4096 pixels
    with Daemon(tmp_path, "px", extra={"limits": {"max_pixels": 4096}}) as dd:
        b = tiny_generate(steps=1)
        del b["params"]["width"]
        b["params"]["height"] = 128
        problem(dd.post("/v1/jobs", b), 422, "too_large")
        b = tiny_generate(steps=1, batch=2)
        del b["params"]["width"], b["params"]["height"]
        problem(dd.post("/v1/jobs", b), 422, "too_large")
        assert dd.get("/v1/jobs").json()["jobs"] == []  # never accepted
        b["params"]["batch"] = 1
        assert dd.wait(dd.submit(b)["id"])["state"] == "succeeded"


def test_access_token_query_only_where_browsers_open_urls(d):
    import requests
    j = d.wait(d.submit(tiny_generate(steps=1), key=KEY)["id"], key=KEY)
    art = j["result"]["images"][0]["url"]
    # EventSource and <img> cannot send a header: the key may ride in the query there
    r = requests.get(d.url(f"/v1/jobs/{j['id']}/events?access_token={KEY}"), timeout=10)
    assert r.status_code == 200 and "event: finished" in r.text, r.text[:300]
    r = requests.get(d.url(f"{art}?access_token={KEY}"), timeout=10)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    problem(requests.get(d.url(f"{art}?access_token=wrong-key"), timeout=10), 401, "invalid_api_key")
    # and nowhere else
    problem(requests.get(d.url(f"/v1/jobs/{j['id']}?access_token={KEY}"), timeout=10), 401, "missing_api_key")
    problem(requests.post(d.url(f"/v1/jobs?access_token={KEY}"), json=tiny_generate(), timeout=10), 401,
            "missing_api_key")

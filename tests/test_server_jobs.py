"""locod: the whole life of jobs against a real daemon (tiny fixture models on the CPU)."""
import fcntl
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import MODELS, SLOW, Daemon, problem, tiny_generate  # noqa: E402


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    with Daemon(tmp_path_factory.mktemp("jobs"), load=("sd1-tiny",)) as daemon:
        yield daemon


def test_generate_life(d):
    r = d.post("/v1/jobs", tiny_generate(steps=3))
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["kind"] == "generate"
    assert job["params"]["width"] == 64 and job["params"]["seed"] == 1
    done = d.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] and done["finished_at"] and done["expires_at"]
    images = done["result"]["images"]
    assert len(images) == 1 and images[0]["width"] == 64
    art = d.get(images[0]["url"])
    assert art.status_code == 200 and art.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert art.headers["ETag"] == f'"{images[0]["sha256"]}"'
    assert art.headers["Accept-Ranges"] == "bytes"
    listed = [a for a in done["artifacts"] if a["sha256"] == images[0]["sha256"]]
    assert listed and listed[0]["media_type"] == "image/png" and listed[0]["size"] == len(art.content)


def test_same_seed_same_image_and_batch(d):
    a = d.wait(d.submit(tiny_generate(steps=2, seed=5))["id"])
    b = d.wait(d.submit(tiny_generate(steps=2, seed=5))["id"])
    assert a["result"]["images"][0]["sha256"] == b["result"]["images"][0]["sha256"]
    c = d.wait(d.submit(tiny_generate(steps=2, seed=5, batch=2, negative_prompt="blurry",
                                      scheduler="euler", guidance_scale=5.0))["id"])
    assert c["state"] == "succeeded" and len(c["result"]["images"]) == 2
    assert c["result"]["scheduler"] == "euler"


def test_return_latents(d):
    j = d.wait(d.submit(tiny_generate(steps=1, return_latents=True))["id"])
    lat = j["result"]["latents"]
    r = d.get(lat["url"])
    assert r.status_code == 200
    header_len = int.from_bytes(r.content[:8], "little")
    header = json.loads(r.content[8:8 + header_len])
    assert header["latents"]["shape"] == [1, 4, 8, 8] and header["initial_latents"]["dtype"] == "F32"


def test_artifact_range_etag_head(d):
    j = d.wait(d.submit(tiny_generate(steps=1))["id"])
    sha = j["result"]["images"][0]["sha256"]
    full = d.get(f"/v1/artifacts/{sha}").content
    r = d.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == full[:10]
    assert r.headers["Content-Range"] == f"bytes 0-9/{len(full)}"
    r = d.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == full[-5:]
    r = d.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == full[100:]
    problem(d.get(f"/v1/artifacts/{sha}", headers={"Range": f"bytes={len(full)}-"}), 416, "range_not_satisfiable")
    # malformed ranges (signs, spaces: strtoull would take them) are ignored: the whole file
    for bad in ("bytes=--5", "bytes=5--3", "bytes= 5-", "bytes=+1-2", "bytes=1-+2", "bytes=- 5"):
        r = d.get(f"/v1/artifacts/{sha}", headers={"Range": bad})
        assert r.status_code == 200 and r.content == full, bad
    r = d.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status_code == 200 and r.content == full
    r = d.get(f"/v1/artifacts/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert r.status_code == 304 and r.content == b""
    h = d.s.head(d.url(f"/v1/artifacts/{sha}"))
    assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(full) and h.content == b""


def test_events_stream(d):
    job = d.submit(tiny_generate(prompt=SLOW, steps=4))
    events = []
    with requests.get(d.url(f"/v1/jobs/{job['id']}/events"), stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [e[0] for e in events]
    assert names[-1] == "finished" and events[-1][1]["state"] == "succeeded"
    denoise = [e[1] for e in events if e[0] == "progress" and e[1]["phase"] == "denoise"]
    steps = [e["step"] for e in denoise]
    # PNDM makes one model call more than its steps (the PLMS warm-up): total counts calls
    assert steps and max(steps) == denoise[-1]["total"] >= 4 and steps == sorted(steps), events


def test_events_of_finished_job_end_at_once(d):
    j = d.wait(d.submit(tiny_generate(steps=1))["id"])
    r = requests.get(d.url(f"/v1/jobs/{j['id']}/events"), timeout=10)
    assert "id: finished\nevent: finished" in r.text, r.text
    # a browser's EventSource reconnects with the last id it got: 204 makes it stop for good
    # instead of replaying the finished event every 2 s for as long as the tab is open
    again = requests.get(d.url(f"/v1/jobs/{j['id']}/events"), headers={"Last-Event-ID": "finished"}, timeout=10)
    assert again.status_code == 204 and again.text == "", (again.status_code, again.text)
    # a client that missed the finished event (another last id) still gets it
    missed = requests.get(d.url(f"/v1/jobs/{j['id']}/events"), headers={"Last-Event-ID": "2"}, timeout=10)
    assert missed.status_code == 200 and "event: finished" in missed.text


def test_queue_position_and_cancel_queued(d):
    blocker = d.submit(tiny_generate(prompt=SLOW, steps=10))
    queued = [d.submit(tiny_generate(steps=1, seed=i)) for i in range(3)]
    d.wait_running(blocker["id"])
    positions = [d.job(q["id"])["queue_position"] for q in queued]
    assert positions == [0, 1, 2], positions
    r = d.post(f"/v1/jobs/{queued[1]['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert r.json()["error"]["code"] == "cancelled" and r.json()["cancel_requested"] is True, r.text
    assert d.job(queued[1]["id"])["cancel_requested"] is True
    assert d.job(queued[2]["id"])["queue_position"] == 1
    problem(d.post(f"/v1/jobs/{queued[1]['id']}/cancel"), 409, "job_finished")
    # running cancel: stops between two model calls
    r = d.post(f"/v1/jobs/{blocker['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True, r.text
    b = d.wait(blocker["id"])
    assert b["state"] == "cancelled" and b["result"] is None
    assert b["progress"] is None and b["error"]["code"] == "cancelled"
    for q in (queued[0], queued[2]):
        assert d.wait(q["id"])["state"] == "succeeded"
    # terminal states never change
    assert d.job(blocker["id"])["state"] == "cancelled"


def test_list_filters_and_cursor(d):
    ids = {d.submit(tiny_generate(steps=1, seed=100 + i))["id"] for i in range(5)}
    for i in ids:
        d.wait(i)
    seen, cursor, pages = [], None, 0
    while True:
        q = "?kind=generate&state=succeeded&limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = d.get("/v1/jobs" + q)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["jobs"]) <= 2
        seen += [j["id"] for j in body["jobs"]]
        assert all(j["state"] == "succeeded" and j["kind"] == "generate" for j in body["jobs"])
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert ids <= set(seen) and len(seen) == len(set(seen)) and pages >= 3
    created = [d.job(i)["created_at"] for i in seen]
    assert created == sorted(created, reverse=True)  # newest first
    assert d.get("/v1/jobs?state=cancelled").json()["jobs"] is not None
    assert d.get("/v1/jobs?key=anonymous&limit=1").status_code == 200


def test_idempotency_key(d):
    body = tiny_generate(steps=1, seed=77)
    h = {"Idempotency-Key": "run-42-a"}
    a = d.post("/v1/jobs", body, headers=h)
    assert a.status_code == 202
    b = d.post("/v1/jobs", body, headers=h)
    assert b.status_code == 200 and b.json()["id"] == a.json()["id"], b.text
    assert b.headers["Location"] == a.headers["Location"] and b.headers["Idempotent-Replayed"] == "true"
    other = tiny_generate(steps=1, seed=78)
    problem(d.post("/v1/jobs", other, headers=h), 422, "idempotency_key_reused")
    c = d.post("/v1/jobs", body, headers={"Idempotency-Key": "run-42-b"})
    assert c.status_code == 202 and c.json()["id"] != a.json()["id"]


def unet_components(d, n=3):
    sites = d.get("/v1/models/sd1-tiny").json()["sites"]
    return [s["name"] for s in sites if s["component"] == "unet" and s["kind"] in ("resnet", "cross_attn")][:n]


def test_trace_unet_life(d):
    comps = unet_components(d)
    j = d.wait(d.submit({"kind": "trace", "model": "sd1-tiny",
                         "params": {"prompt": "a house in the style of van gogh", "subject": "van gogh",
                                    "components": comps, "steps": 2, "width": 64, "height": 64}})["id"],
               timeout=120)
    assert j["state"] == "succeeded", j
    res = j["result"]
    table = d.get(res["table"]["url"])
    assert table.status_code == 200 and table.headers["Content-Type"] == "application/json"
    assert json.loads(table.content) == res["report"]
    restored = [i for i in res["images"] if i.get("site")]
    assert [i["site"] for i in restored] == comps
    assert {i["name"] for i in res["images"]} >= {"clean.png", "corrupted.png"}
    png = d.get(restored[0]["url"]).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_causal_threshold_marks_and_lists_the_causal_states(d):
    # the tiny CLIP's cosines are all negative (CLIP score 0), so this checks the plumbing; which
    # states pass a threshold is test_trace.c's causal_threshold_marks_states
    params = {"prompt": "a house in the style of van gogh", "subject": "van gogh", "target": "text_encoder",
              "positions": [1, 6], "steps": 1, "width": 64, "height": 64, "seed": 5}
    plain = d.wait(d.submit({"kind": "trace", "model": "sd1-tiny", "params": params})["id"], timeout=120)
    states = plain["result"]["report"]["text_encoder"]["states"]
    assert "causal" not in plain["result"]["report"] and all("causal" not in s for s in states)
    j = d.wait(d.submit({"kind": "trace", "model": "sd1-tiny", "params": {**params, "causal_threshold": 0}})["id"],
               timeout=120)
    assert j["state"] == "succeeded", j
    rep = j["result"]["report"]
    marked = rep["text_encoder"]["states"]
    assert [s["clip_score"] for s in marked] == [s["clip_score"] for s in states], "same seeds, same scores"
    assert all(s["causal"] == (s["clip_score"] > 0) for s in marked)
    assert rep["causal"]["threshold"] == 0
    assert [(c["site"], c["position"]) for c in rep["causal"]["text_encoder"]] == \
        [(s["site"], s["position"]) for s in marked if s["causal"]]
    problem(d.post("/v1/jobs", {"kind": "trace", "model": "sd1-tiny",
                                "params": {**params, "causal_threshold": 101}}), 422, "out_of_range")


def test_trace_text_encoder_heatmaps(d):
    j = d.wait(d.submit({"kind": "trace", "model": "sd1-tiny",
                         "params": {"prompt": "a house in the style of van gogh", "subject": "van gogh",
                                    "target": "text_encoder", "positions": [1, 6], "steps": 1, "width": 64,
                                    "height": 64}})["id"], timeout=120)
    assert j["state"] == "succeeded", j
    assert [h["name"] for h in j["result"]["heatmaps"]] == ["heatmap-self_attn.png", "heatmap-mlp.png"]


def test_localize_life(d):
    j = d.wait(d.submit({"kind": "localize", "model": "sd1-tiny",
                         "params": {"prompts": ["a house in the style of van gogh"],
                                    "altered_prompts": ["a painting of a house"], "window": 2, "starts": [0, 4, 8],
                                    "steps": 2, "width": 64, "height": 64}})["id"], timeout=120)
    assert j["state"] == "succeeded", j
    best = j["result"]["best_window"]
    # end is the window's last layer, as in the report; indices spell the window out
    assert best["start"] in (0, 4, 8) and best["end"] == best["start"] + 1 and best["size"] == 2
    assert best["indices"] == [best["start"], best["start"] + 1] and len(best["layers"]) == 2
    report = j["result"]["report"]["best_window"]
    assert {k: report[k] for k in best} == best
    assert d.get(j["result"]["grid"]["url"]).content[:4] == b"\x89PNG"


def watch_and_cancel(d, job_id, cancel_at_step=None):
    """The job's SSE events until it finishes; cancels it once a progress event shows
    cancel_at_step or more (None: never). Returns [(event name, data)]."""
    events, sent = [], False
    with requests.get(d.url(f"/v1/jobs/{job_id}/events"), stream=True, timeout=120) as r:
        assert r.status_code == 200
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                events.append((name, data))
                if not sent and cancel_at_step is not None and name == "progress" and data["step"] >= cancel_at_step:
                    assert d.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
                    sent = True
    return events


# 2 batches x 3 Euler steps (one model call each) in both: the trace's 20 trajectories (clean,
# corrupted, 3 layers x 2 modules x 3 positions) in batches of 16 and 4, the 2 seeds' 4 images
# (unedited + 3 windows) of the localize job one batch each
RESEARCH_SLOW = {
    "trace": {"prompt": SLOW, "subject": SLOW, "target": "text_encoder", "positions": [0, 1, 2]},
    "localize": {"prompts": [SLOW], "altered_prompts": ["a painting of a house"], "window": 2,
                 "starts": [0, 4, 8], "seeds": [1, 2]},
}


@pytest.mark.parametrize("kind", ["trace", "localize"])
def test_research_progress_in_steps_and_cancel_within_one(d, kind):
    """Progress of a trace / localize job counts denoising steps over all its batches: total is
    there from the first event of the job's phase and never changes, step never goes back and
    ends at total; a cancel stops it within one step (the worker polls for it after every model
    call; SLOW makes each report last 200 ms, so the cancel reaches the worker within the step it
    was sent in)."""
    params = {**RESEARCH_SLOW[kind], "steps": 3, "scheduler": "euler", "width": 64, "height": 64}
    body = {"kind": kind, "model": "sd1-tiny", "params": params}
    events = watch_and_cancel(d, d.submit(body)["id"])
    assert events[-1][0] == "finished" and events[-1][1]["state"] == "succeeded", events
    prog = [e for n, e in events if n == "progress" and e["phase"] == kind]
    steps = [e["step"] for e in prog]
    assert {e["total"] for e in prog} == {2 * 3} and steps == sorted(steps) and steps[-1] == 2 * 3, events

    events = watch_and_cancel(d, d.submit(body)["id"], cancel_at_step=2)
    assert events[-1][0] == "finished" and events[-1][1]["state"] == "cancelled", events
    prog = [e for n, e in events if n == "progress" and e["phase"] == kind]
    steps = [e["step"] for e in prog]
    assert {e["total"] for e in prog} == {2 * 3} and steps == sorted(steps), events
    # once the cancel request shows, the job makes at most one more step (a check per batch
    # would have run the rest of the first batch, 3 steps, and scored it first)
    after = [e["step"] for e in prog if e["cancel_requested"]]
    assert after and max(after) <= after[0] + 1 < 2 * 3, events


@pytest.mark.parametrize("method,extra", [
    ("locoedit", {"layers": [4, 5]}),
    ("diff_quickfix", {}),
    ("neuron", {"layers": [4, 5], "neurons": 4, "prompts": ["a house by van gogh", "a tree by van gogh"],
                "normal_prompts": ["a house", "a tree"]}),
])
def test_edit_life_and_generate_from_variant(d, method, extra):
    name = f"sd1-tiny+{method.replace('_', '-')}"
    # the neuron method ranks by its prompt sets and takes no concept or target
    subject = {} if method == "neuron" else {"concept": "van gogh", "target": "a painting"}
    j = d.wait(d.submit({"kind": "edit", "model": "sd1-tiny",
                         "params": {"method": method, **subject, "variant": name, **extra}})["id"], timeout=120)
    assert j["state"] == "succeeded", j
    assert j["result"]["variant"] == name and j["result"]["base"] == "sd1-tiny"
    delta = d.get(j["result"]["delta"]["url"]).content
    header = json.loads(delta[8:8 + int.from_bytes(delta[:8], "little")])
    assert len([k for k in header if k != "__metadata__"]) >= 1
    v = d.get(f"/v1/models/{name}").json()
    assert v["state"] == "loaded" and v["source"] == "variant" and v["base"] == "sd1-tiny"
    assert name in [m["name"] for m in d.get("/v1/models/sd1-tiny/variants").json()["variants"]]
    problem(d.post("/v1/jobs", {"kind": "edit", "model": "sd1-tiny",
                                "params": {"method": method, **subject, "variant": name, **extra}}), 409,
            "variant_exists")
    # edits do not stack: refused at once, naming the base to edit instead
    r = problem(d.post("/v1/jobs", {"kind": "edit", "model": name,
                                    "params": {"method": method, **subject, **extra}}), 422, "invalid_value")
    assert "sd1-tiny" in r["detail"] and r["errors"][0]["pointer"] == "/model", r
    g = d.wait(d.submit({**tiny_generate(prompt="a house by van gogh", steps=2, seed=3), "model": name})["id"])
    base = d.wait(d.submit(tiny_generate(prompt="a house by van gogh", steps=2, seed=3))["id"])
    assert g["state"] == "succeeded" and base["state"] == "succeeded"
    assert g["result"]["images"][0]["sha256"] != base["result"]["images"][0]["sha256"], "the edit changed nothing"
    assert d.post(f"/v1/models/{name}/unload").status_code in (200, 202)
    deadline = time.time() + 30
    while d.get(f"/v1/models/{name}").status_code != 404:
        assert time.time() < deadline
        time.sleep(0.05)


def test_research_kinds_validate_before_running(d):
    problem(d.post("/v1/jobs", {"kind": "trace", "model": "sd1-tiny", "params": {"prompt": "a cat"}}), 422,
            "missing_field")
    problem(d.post("/v1/jobs", {"kind": "trace", "model": "sd1-tiny",
                                "params": {"prompt": "a cat", "subject": "dog"}}), 422)
    problem(d.post("/v1/jobs", {"kind": "localize", "model": "sd1-tiny",
                                "params": {"prompts": ["a"], "altered_prompts": ["b"], "window": 99}}), 422,
            "out_of_range")


def test_without_clip_scorer_trace_is_501(tmp_path):
    with Daemon(tmp_path, "noscorer", extra={"clip_scorer": None}) as d:
        p = problem(d.post("/v1/jobs", {"kind": "trace", "model": "sd1-tiny",
                                        "params": {"prompt": "a cat by monet", "subject": "monet"}}), 501,
                    "kind_not_implemented")
        assert "clip_scorer" in p["detail"]
        assert d.get("/v1/jobs").json()["jobs"] == []  # never accepted


def test_models_list_show_load_unload(d):
    models = d.get("/v1/models").json()["models"]
    names = {m["name"]: m for m in models}
    assert names["sd1-tiny"]["state"] == "loaded" and names["sd2-tiny"]["state"] == "available"
    show = d.get("/v1/models/sd1-tiny").json()
    assert show["family"] == "sd1" and show["configs"]["unet"]["_class_name"] == "UNet2DConditionModel"
    cross = [s for s in show["sites"] if s["kind"] == "cross_attn"]
    assert cross and [s["cross_index"] for s in cross] == list(range(len(cross)))
    assert any(s["component"] == "text_encoder" for s in show["sites"])
    assert show["runtime"]["size_multiple"] > 0 and show["memory"]["bytes"] > 0
    # an unloaded model still shows its configs and UNet sites (read from the files)
    sd2 = d.get("/v1/models/sd2-tiny").json()
    assert sd2["state"] == "available" and sd2["family"] == "sd2" and sd2["sites"]
    problem(d.post("/v1/jobs", {**tiny_generate(), "model": "sd2-tiny"}), 409, "model_not_loaded")
    r = d.post("/v1/models/sd2-tiny/load")
    assert r.status_code in (200, 202), r.text
    deadline = time.time() + 60
    while d.get("/v1/models/sd2-tiny").json()["state"] != "loaded":
        assert time.time() < deadline
        time.sleep(0.05)
    j = d.wait(d.submit({**tiny_generate(steps=1), "model": "sd2-tiny"})["id"])
    assert j["state"] == "succeeded", j["error"]
    assert d.post("/v1/models/sd2-tiny/unload").status_code in (200, 202)
    deadline = time.time() + 60
    while d.get("/v1/models/sd2-tiny").json()["state"] != "available":
        assert time.time() < deadline
        time.sleep(0.05)
    assert d.get("/v1/models/sd1-tiny/variants").json() == {"variants": []}


def test_readyz_ignores_a_load_an_admin_asked_for(d):
    """A model an admin loads while a job runs waits behind it in state 'loading'; the server still
    serves everything else, so /readyz stays 200 (only start-up models count; a probe that pulled
    the server would also stop clients polling their jobs)."""
    blocker = d.submit(tiny_generate(prompt=SLOW, steps=20))
    d.wait_running(blocker["id"])
    assert d.post("/v1/models/sd2-tiny/load").status_code in (200, 202)
    assert d.get("/v1/models/sd2-tiny").json()["state"] == "loading"
    r = d.get("/readyz")
    assert r.status_code == 200, r.text
    assert d.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
    deadline = time.time() + 60
    while d.get("/v1/models/sd2-tiny").json()["state"] != "loaded":
        assert time.time() < deadline
        time.sleep(0.05)
    assert d.post("/v1/models/sd2-tiny/unload").status_code in (200, 202)
    while d.get("/v1/models/sd2-tiny").json()["state"] != "available":
        assert time.time() < deadline
        time.sleep(0.05)


def test_model_show_reads_files_outside_the_lock(tmp_path):
    """GET /v1/models/{name} reads the model's files (configs, safetensors headers); on a slow disk
    that must not stall other requests. The test holds a write lease on the model's
    model_index.json, so the daemon's open() of it blocks (like a slow disk) until the lease is
    released: meanwhile requests that take the server's lock must still answer, and the answer,
    once the file opens, is the one the same files give."""
    root = tmp_path / "slow-root"
    slow = root / "slow-tiny"
    slow.mkdir(parents=True)
    src = MODELS / "sd1-tiny"
    for entry in src.iterdir():
        if entry.name != "model_index.json":
            (slow / entry.name).symlink_to(entry)
    index = slow / "model_index.json"
    index.write_bytes((src / "model_index.json").read_bytes())
    # the lease holder is told of the open by SIGIO. The handler only appends to a list: it runs
    # in the main thread between bytecodes, and an Event.set() there deadlocks whenever the signal
    # lands while the main thread itself holds the Event's lock inside wait().
    opened = []
    old_sigio = signal.signal(signal.SIGIO, lambda *_: opened.append(True))
    lease_fd = os.open(index, os.O_RDONLY)
    try:
        with Daemon(tmp_path, "slowdisk", extra={"model_roots": [str(MODELS), str(root)]}) as d:
            fcntl.fcntl(lease_fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            box = {}
            t = threading.Thread(target=lambda: box.setdefault("r", d.s.get(d.url("/v1/models/slow-tiny"),
                                                                             timeout=60)))
            t.start()
            try:
                deadline = time.monotonic() + 20
                while not opened and time.monotonic() < deadline:
                    time.sleep(0.01)  # interrupted by SIGIO, whose handler then runs
                assert opened, "the show request never opened the model's files"
                for path in ("/readyz", "/v1/models", "/v1/models/sd1-tiny"):
                    r = requests.get(d.url(path), timeout=5)  # ReadTimeout while the lock is held
                    assert r.status_code == 200, (path, r.text)
                assert t.is_alive(), "the show request did not wait for the file"
            finally:
                fcntl.fcntl(lease_fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                t.join(60)
            shown = box["r"].json()
            assert box["r"].status_code == 200, shown
            ref = d.get("/v1/models/sd1-tiny").json()  # the same files, resident (runtime sites)
            assert shown["name"] == "slow-tiny" and shown["state"] == "available" and shown["family"] == "sd1"
            assert list(shown) == ["name", "state", "source", "base", "error", "family", "memory", "url",
                                   "configs", "sites", "runtime"]
            assert shown["configs"] == ref["configs"] and shown["runtime"] is None
            assert shown["sites"] == [s for s in ref["sites"] if s["component"] == "unet"]
    finally:
        os.close(lease_fd)
        signal.signal(signal.SIGIO, old_sigio)


def test_metrics(d):
    r = d.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    t = r.text
    for name in ("loco_queue_depth", "loco_job_wait_seconds_bucket", "loco_job_run_seconds_count",
                 "loco_device_memory_bytes", "loco_errors_total", "loco_worker_up 1",
                 'loco_jobs_finished_total{kind="generate",state="succeeded"}'):
        assert name in t, name
    # the CPU backend records no graphs and has no card to report
    assert "\nloco_graph_pool_bytes 0\n" in t
    assert "loco_gpu_memory_bytes" not in t


def test_health_and_ready(d):
    assert d.get("/healthz").json() == {"status": "ok"}
    r = d.get("/readyz")
    assert r.status_code == 200 and r.json()["worker"] is True


def test_retention_gone(tmp_path):
    with Daemon(tmp_path, "ret", extra={"retention": {"jobs_s": 1, "sweep_interval_s": 1}}) as d:
        j = d.wait(d.submit(tiny_generate(steps=1))["id"])
        sha = j["result"]["images"][0]["sha256"]
        deadline = time.time() + 20
        while d.get(f"/v1/jobs/{j['id']}").status_code != 410:
            assert time.time() < deadline
            time.sleep(0.2)
        problem(d.get(f"/v1/jobs/{j['id']}"), 410, "job_expired")
        problem(d.get(f"/v1/artifacts/{sha}"), 404, "unknown_artifact")
        problem(d.get("/v1/jobs/" + "0" * 32), 404, "unknown_job")


def test_retention_prunes_tombstones(tmp_path):
    """expired_jobs (the tombstones behind 410) is pruned after retention.tombstones_s: the id
    then answers 404 and the table does not grow forever."""
    extra = {"retention": {"jobs_s": 1, "sweep_interval_s": 1, "tombstones_s": 2}}
    with Daemon(tmp_path, "tomb", extra=extra) as d:
        j = d.wait(d.submit(tiny_generate(steps=1))["id"])
        deadline = time.time() + 20
        while d.get(f"/v1/jobs/{j['id']}").status_code != 410:
            assert time.time() < deadline
            time.sleep(0.2)
        while d.get(f"/v1/jobs/{j['id']}").status_code != 404:
            assert time.time() < deadline, "the tombstone was never pruned"
            time.sleep(0.2)
        problem(d.get(f"/v1/jobs/{j['id']}"), 404, "unknown_job")
        db = sqlite3.connect(f"file:{d.data / 'jobs.sqlite3'}?mode=ro", uri=True)
        try:
            assert db.execute("SELECT COUNT(*) FROM expired_jobs").fetchone()[0] == 0
        finally:
            db.close()


def _mount_tmpfs(path, size):
    """Mount a small tmpfs (needs root; the unit tests in test_server_store.c cover the store
    without it)."""
    import subprocess
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here")


def _fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_retention_frees_space_on_a_full_disk_and_readyz_says_so(tmp_path):
    """On a full disk the purge cannot write, so it deletes the files only expired jobs use
    anyway; /readyz is 503 while the store cannot write and 200 again once a write succeeds; the
    rows go once the disk has room."""
    import subprocess
    d = Daemon(tmp_path, "full", extra={"retention": {"jobs_s": 3, "sweep_interval_s": 1}})
    _mount_tmpfs(d.data, "6m")
    try:
        d.start()
        jobs = [d.wait(d.submit(tiny_generate(steps=1, seed=i))["id"]) for i in range(3)]
        files = [d.data / "artifacts" / j["result"]["images"][0]["sha256"][:2] / j["result"]["images"][0]["sha256"]
                 for j in jobs]
        assert all(f.exists() for f in files)
        _fill(d.data / "filler")
        reasons, deadline = set(), time.time() + 30
        while any(f.exists() for f in files) or not reasons:
            assert time.time() < deadline, f"files {[f.exists() for f in files]}, reasons {reasons}"
            d.post("/v1/jobs", tiny_generate(steps=1, seed=99))  # a write that may fail
            r = d.get("/readyz")
            if r.status_code == 503:
                reasons.update(r.json()["reasons"])
            time.sleep(0.2)
        assert "the job store is failing: disk full (database or disk is full)" in reasons, reasons
        (d.data / "filler").unlink()
        deadline = time.time() + 20
        while [d.get(f"/v1/jobs/{j['id']}").status_code for j in jobs] != [410] * 3 or \
                d.get("/readyz").status_code != 200:
            assert time.time() < deadline, d.get("/readyz").json()
            time.sleep(0.2)
        d.stop()
    finally:
        if d.proc and d.proc.poll() is None:
            d.stop()
        subprocess.run(["umount", str(d.data)])


def test_edit_and_clip_skip_checked_against_the_model_before_acceptance(tmp_path):
    """What only the model can say (its layer count, its text encoders' depth) is checked when
    the job is posted, not by a job that is accepted and then fails."""
    with Daemon(tmp_path, "xl", load=("sdxl-tiny",)) as d:
        # SD-XL's default LocoEdit window starts at layer 45; the tiny UNet has 17
        r = problem(d.post("/v1/jobs", {"kind": "edit", "model": "sdxl-tiny",
                                        "params": {"method": "locoedit", "concept": "van gogh"}}), 422,
                    "missing_field")
        assert "give 'layers'" in r["detail"], r
        r = problem(d.post("/v1/jobs", {**tiny_generate(clip_skip=11), "model": "sdxl-tiny"}), 422, "out_of_range")
        assert r["errors"][0]["pointer"] == "/params/clip_skip", r
        j = d.wait(d.submit({"kind": "edit", "model": "sdxl-tiny",
                             "params": {"method": "locoedit", "concept": "van gogh", "layers": [15, 16],
                                        "matrices": ["to_v"], "lambda_v": 0.05}})["id"],
                   timeout=120)
        assert j["state"] == "succeeded", j
        assert j["params"]["matrices"] == ["to_v"] and j["params"]["lambda_k"] == 0.01, j["params"]
        # only the value projections of the two layers changed
        delta = d.get(j["result"]["delta"]["url"]).content
        names = [k for k in json.loads(delta[8:8 + int.from_bytes(delta[:8], "little")]) if k != "__metadata__"]
        assert len(names) == 2 and all(n.endswith("attn2.to_v.weight") for n in names), names


def test_integral_numbers_count_as_integers_and_server_seeds_fit_javascript(d):
    # JSON Schema (and JavaScript clients) count 2.0 as an integer; the job keeps it as 2
    body = tiny_generate(steps=2.0, size=64.0)
    body["params"].pop("seed")
    j = d.wait(d.submit(body)["id"])
    assert j["state"] == "succeeded", j
    assert j["params"]["steps"] == 2 and isinstance(j["params"]["steps"], int) and j["params"]["width"] == 64
    # a seed the server chose survives a round trip through a JavaScript number
    assert 0 <= j["params"]["seed"] < 2 ** 53, j["params"]["seed"]
    problem(d.post("/v1/jobs", tiny_generate(steps=2.5)), 422, "invalid_type")
    loc = d.submit({"kind": "localize", "model": "sd1-tiny",
                    "params": {"prompts": ["a house by van gogh"], "altered_prompts": ["a house"], "starts": [1.0],
                               "seeds": [3.0], "steps": 1, "width": 64, "height": 64}})
    assert loc["params"]["starts"] == [1] and loc["params"]["seeds"] == [3], loc["params"]
    # with explicit seeds no unused server-chosen seed is recorded, and a seed beside them is refused
    assert "seed" not in loc["params"], loc["params"]
    both = {"kind": "localize", "model": "sd1-tiny",
            "params": {"prompts": ["a house by van gogh"], "altered_prompts": ["a house"], "seeds": [3], "seed": 4}}
    assert problem(d.post("/v1/jobs", both), 422, "invalid_value")["errors"][0]["pointer"] == "/params/seed"
    assert d.post(f"/v1/jobs/{loc['id']}/cancel").status_code in (200, 202)


def test_a_variant_name_taken_by_a_queued_edit_is_refused_at_once(d):
    blocker = d.submit(tiny_generate(prompt=SLOW, steps=10))
    params = {"method": "locoedit", "concept": "van gogh", "layers": [4, 5], "variant": "v-race"}
    first = d.submit({"kind": "edit", "model": "sd1-tiny", "params": params})
    r = problem(d.post("/v1/jobs", {"kind": "edit", "model": "sd1-tiny", "params": params}), 409, "variant_exists")
    assert "already queued or running" in r["detail"], r
    assert d.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
    assert d.post(f"/v1/jobs/{blocker['id']}/cancel").status_code in (200, 202)
    d.wait(blocker["id"])


def test_generate_progress_total_is_the_model_calls_from_the_first_event(d):
    # PNDM makes steps + 1 UNet calls: the first event already says 4 for 3 steps
    events = watch_and_cancel(d, d.submit(tiny_generate(prompt=SLOW, steps=3, scheduler="pndm"))["id"])
    assert events[-1][0] == "finished" and events[-1][1]["state"] == "succeeded", events
    prog = [e for n, e in events if n == "progress" and e["phase"] == "denoise"]
    assert prog and {e["total"] for e in prog} == {4}, prog
    png = [e for n, e in events if n == "progress" and e["phase"] == "encode_png"]
    assert png and png[-1]["step"] == png[-1]["total"] == 1, png


def test_every_kinds_result_matches_its_schema(d):
    """The contract's result schemas (proto/schemas/result-<kind>.json, chosen by job.json for a
    succeeded job of that kind) hold for real results, the optional parts included."""
    from locod_harness import schema_validator
    job_schema = schema_validator("job.json")
    bodies = [
        tiny_generate(steps=1, return_latents=True),
        {"kind": "trace", "model": "sd1-tiny",
         "params": {"prompt": "a house in the style of van gogh", "subject": "van gogh", "steps": 1, "width": 64,
                    "height": 64, "components": unet_components(d)[:2], "causal_threshold": 1}},
        {"kind": "trace", "model": "sd1-tiny",
         "params": {"prompt": "a house in the style of van gogh", "subject": "van gogh", "target": "text_encoder",
                    "positions": [1, 6], "steps": 1, "width": 64, "height": 64}},
        {"kind": "localize", "model": "sd1-tiny",
         "params": {"prompts": ["a house by van gogh"], "altered_prompts": ["a house"], "starts": [0, 4], "steps": 1,
                    "width": 64, "height": 64}},
        {"kind": "edit", "model": "sd1-tiny",
         "params": {"method": "locoedit", "concept": "van gogh", "layers": [4, 5], "export": "folder",
                    "variant": "sd1-tiny-schema"}},
    ]
    for body in bodies:
        j = d.wait(d.submit(body)["id"], timeout=120)
        assert j["state"] == "succeeded", j
        errors = sorted(job_schema.iter_errors(j), key=str)
        assert not errors, (body["kind"], [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]])
    # the schema is not vacuous: a result missing a required field fails it
    broken = {**j, "result": {k: v for k, v in j["result"].items() if k != "variant"}}
    assert list(job_schema.iter_errors(broken))
    assert d.post("/v1/models/sd1-tiny-schema/unload").status_code in (200, 202)

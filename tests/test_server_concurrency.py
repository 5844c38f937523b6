"""locod under many clients: nothing lost or duplicated, fair share between keys, quota and a
bounded queue."""
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import SLOW, Daemon, problem, tiny_generate  # noqa: E402

KEYS = {"alice": {"key": "alice-secret-key-0001"}, "bob": {"key": "bob-secret-key-0002"},
        "carol": {"key": "carol-secret-key-0003", "max_pending": 2},
        "root": {"key": "root-secret-key-0004", "admin": True}}


def test_100_concurrent_clients(tmp_path):
    with Daemon(tmp_path, "many", keys=KEYS) as d:
        keys = ["alice", "bob", "root"]

        def client(i):
            s = requests.Session()
            key = KEYS[keys[i % 3]]["key"]
            h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "Idempotency-Key": f"client-{i}"}
            import json as _j
            body = _j.dumps(tiny_generate(steps=1, size=32, seed=i))
            r = s.post(d.url("/v1/jobs"), data=body, headers=h, timeout=60)
            assert r.status_code == 202, r.text
            jid = r.json()["id"]
            # a retry of the same request must not create a second job
            r2 = s.post(d.url("/v1/jobs"), data=body, headers=h, timeout=60)
            assert r2.status_code == 200 and r2.json()["id"] == jid
            deadline = time.time() + 240
            while time.time() < deadline:
                j = s.get(d.url(f"/v1/jobs/{jid}"), headers=h, timeout=60).json()
                if j["state"] in ("succeeded", "failed", "cancelled"):
                    return jid, j["state"], j["key"]
                time.sleep(0.2)
            raise AssertionError(f"job {jid} did not finish")

        with ThreadPoolExecutor(max_workers=100) as ex:
            results = list(ex.map(client, range(100)))
        ids = [r[0] for r in results]
        assert len(set(ids)) == 100, "a job id was handed out twice"
        assert all(r[1] == "succeeded" for r in results), [r for r in results if r[1] != "succeeded"]
        assert all(r[2] == keys[i % 3] for i, r in enumerate(results))
        listed, cursor = [], None
        while True:
            r = d.get("/v1/jobs?limit=500" + (f"&cursor={cursor}" if cursor else ""), key=KEYS["root"]["key"])
            listed += [j["id"] for j in r.json()["jobs"]]
            cursor = r.json()["next_cursor"]
            if not cursor:
                break
        assert sorted(listed) == sorted(ids), "the store lost or duplicated a job"
        m = d.get("/metrics").text
        assert 'loco_jobs_finished_total{kind="generate",state="succeeded"} 100' in m
        assert d.alive()


def test_fair_share_round_robin(tmp_path):
    with Daemon(tmp_path, "fair", keys=KEYS) as d:
        a, b = KEYS["alice"]["key"], KEYS["bob"]["key"]
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=5), key=a)
        d.wait_running(blocker["id"], key=a)
        alice = [d.submit(tiny_generate(steps=1, seed=i), key=a)["id"] for i in range(6)]
        bob = d.submit(tiny_generate(steps=1, seed=99), key=b)["id"]
        # bob's single job is second in line, not seventh
        assert d.job(bob, key=b)["queue_position"] <= 1
        for j in alice + [bob]:
            d.wait(j, key=a if j != bob else b)
        started = {j: d.job(j, key=a if j != bob else b)["started_at"] for j in alice + [bob]}
        order = sorted(started, key=started.get)
        assert order.index(bob) <= 1, order
        # non-admin keys see only their own jobs
        assert {j["key"] for j in d.get("/v1/jobs", key=b).json()["jobs"]} == {"bob"}
        problem(d.get(f"/v1/jobs/{alice[0]}", key=b), 404, "unknown_job")
        problem(d.get("/v1/jobs?key=alice", key=b), 403)


def test_quota_429_and_queue_full_503(tmp_path):
    with Daemon(tmp_path, "limits", keys=KEYS, extra={"queue": {"max_queued": 4}}) as d:
        c, a = KEYS["carol"]["key"], KEYS["alice"]["key"]
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=20), key=a)
        d.wait_running(blocker["id"], key=a)
        d.submit(tiny_generate(steps=1), key=c)
        d.submit(tiny_generate(steps=1), key=c)
        r = d.post("/v1/jobs", tiny_generate(steps=1), key=c)
        p = problem(r, 429, "quota_exceeded")
        assert r.headers["Retry-After"] == "2" and "carol" in p["detail"]
        d.submit(tiny_generate(steps=1), key=a)
        d.submit(tiny_generate(steps=1), key=a)
        r = d.post("/v1/jobs", tiny_generate(steps=1), key=a)
        problem(r, 503, "queue_full")
        assert int(r.headers["Retry-After"]) > 0
        assert d.get("/readyz").status_code == 503
        assert d.post(f"/v1/jobs/{blocker['id']}/cancel", key=a).status_code == 202
        assert d.wait(blocker["id"], key=a)["state"] == "cancelled"
        assert d.alive()


def test_many_event_streams_and_pollers(tmp_path):
    with Daemon(tmp_path, "streams") as d:
        jobs = [d.submit(tiny_generate(steps=2, seed=i))["id"] for i in range(20)]
        finished = []

        def stream(jid):
            with requests.get(d.url(f"/v1/jobs/{jid}/events"), stream=True, timeout=120) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line == "event: finished":
                        finished.append(jid)

        threads = [threading.Thread(target=stream, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert sorted(finished) == sorted(jobs)
        deadline = time.time() + 10  # a stream is released just after its last bytes are sent
        while "loco_sse_streams 0" not in d.get("/metrics").text:
            assert time.time() < deadline, "event streams were not released"
            time.sleep(0.05)


def test_event_streams_capped_below_max_connections(tmp_path):
    """Each event stream holds a connection for the whole job, so streams alone must not take every
    connection: without limits.max_sse_streams the cap is half of limits.max_connections, and a
    stream beyond it gets 503 + Retry-After with a problem naming the limit, while ordinary
    requests still get through. Every client here is on 127.0.0.1, so the per-address limit (by
    default also half of max_connections) is lifted to max_connections: it is not what this tests."""
    limits = {"max_connections": 8, "max_connections_per_ip": 8}
    with Daemon(tmp_path, "sse-cap", extra={"limits": limits}) as d:
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=40))
        d.wait_running(blocker["id"])
        url = d.url(f"/v1/jobs/{blocker['id']}/events")
        held = []
        try:
            for _ in range(4):  # 8 / 2
                r = requests.get(url, stream=True, timeout=30)
                assert r.status_code == 200, r.text
                held.append(r)
            deadline = time.time() + 10
            while "loco_sse_streams 4" not in d.get("/metrics").text:
                assert time.time() < deadline, d.get("/metrics").text
                time.sleep(0.05)
            r = requests.get(url, stream=True, timeout=30)
            if r.status_code != 503:
                held.append(r)
                raise AssertionError(f"stream 5 of a cap of 4 was served ({r.status_code})")
            p = problem(r, 503, "too_many_streams")
            assert int(r.headers["Retry-After"]) > 0 and "limits.max_sse_streams" in p["detail"], p
            assert d.job(blocker["id"])["state"] == "running"  # polling still answers
            held.pop().close()
            deadline = time.time() + 15  # the daemon notices the closed stream at its next keepalive
            while True:
                r = requests.get(url, stream=True, timeout=30)
                if r.status_code == 200:
                    held.append(r)
                    break
                r.close()
                assert time.time() < deadline, "a closed stream's slot was never freed"
                time.sleep(0.2)
        finally:
            for r in held:
                r.close()
        assert d.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
        assert d.wait(blocker["id"])["state"] == "cancelled"


def test_keepalive_reaches_a_queued_jobs_stream_while_another_job_runs(tmp_path):
    """A stream gets a ': keepalive' after sse.keepalive_ms of its own silence, whatever other jobs
    do: a queued job's stream behind a running job (whose progress changes the server's state many
    times a second) used to get no bytes at all, so proxies cut it and dead clients went unseen."""
    with Daemon(tmp_path, "sse-ka", extra={"sse": {"keepalive_ms": 300}}) as d:
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=40))
        d.wait_running(blocker["id"])
        queued = d.submit(tiny_generate(steps=1))
        r = requests.get(d.url(f"/v1/jobs/{queued['id']}/events"), stream=True, timeout=30)
        assert r.status_code == 200, r.text
        lines = []

        def read():
            try:
                for line in r.iter_lines(decode_unicode=True):
                    lines.append(line)
            except Exception:  # the stream is closed under the reader at the end
                pass

        t = threading.Thread(target=read, daemon=True)
        t.start()
        time.sleep(2.5)
        assert d.job(blocker["id"])["state"] == "running", "the blocker ended too soon for this test to mean anything"
        assert d.job(queued["id"])["state"] == "queued"
        got = list(lines)
        r.close()
        assert any(l.startswith("event: queued") for l in got), got
        assert got.count(": keepalive") >= 3, got
        assert d.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
        assert d.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 200


def test_vae_upcast_reaches_the_worker(tmp_path):
    """"vae_upcast" is passed to the worker process (one that refused its arguments would never
    become ready); on the CPU SD-XL's VAE decodes in f32 whatever it says, so jobs just succeed."""
    with Daemon(tmp_path, "upcast", load=("sdxl-tiny",), extra={"vae_upcast": "bf16"}) as d:
        body = {"kind": "generate", "model": "sdxl-tiny",
                "params": {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 1}}
        job = d.submit(body)
        assert d.wait(job["id"])["state"] == "succeeded"
    d = Daemon(tmp_path, "upcast-bad", extra={"vae_upcast": "fp16"})
    with pytest.raises(RuntimeError, match="vae_upcast"):
        d.start()
    d.logf.close()


def test_explicit_stream_cap_must_leave_connections(tmp_path):
    d = Daemon(tmp_path, "sse-bad", extra={"limits": {"max_connections": 8, "max_sse_streams": 8}})
    with pytest.raises(RuntimeError, match="max_sse_streams"):
        d.start()
    d.logf.close()

"""locod keeps every accepted job: kill -9 and restart, worker crashes and device faults,
cancel of queued and running jobs, a job that ignores cancel."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import CRASH, DEVICE_FAULT, HANG, MODELS, SLOW, Daemon, tiny_generate  # noqa: E402


def test_kill9_restart_accounts_for_every_job(tmp_path):
    d = Daemon(tmp_path, "k9").start()
    running = d.submit(tiny_generate(prompt=SLOW, steps=30))
    retry = d.submit({**tiny_generate(steps=1, seed=3), "retry_on_restart": True})
    queued = [d.submit(tiny_generate(steps=1, seed=10 + i))["id"] for i in range(5)]
    d.wait_running(running["id"])
    done_before = [j["id"] for j in d.get("/v1/jobs?state=succeeded").json()["jobs"]]
    d.kill9()
    # the worker dies with the daemon (PR_SET_PDEATHSIG); start again on the same data
    d.start()
    r = d.wait(running["id"])
    assert r["state"] == "failed" and r["error"]["code"] == "server_restart", r
    assert "retry_on_restart" in r["error"]["message"]
    for jid in queued + [retry["id"]] + done_before:
        assert d.wait(jid)["state"] == "succeeded"
    all_ids = {j["id"] for j in d.get("/v1/jobs?limit=500").json()["jobs"]}
    assert {running["id"], retry["id"], *queued} <= all_ids
    d.stop()


def test_kill9_running_job_with_retry_is_requeued(tmp_path):
    d = Daemon(tmp_path, "k9r").start()
    job = d.submit({**tiny_generate(prompt=SLOW, steps=8), "retry_on_restart": True})
    d.wait_running(job["id"])
    d.kill9()
    d.start()
    j = d.wait(job["id"])
    assert j["state"] == "succeeded" and j["attempts"] == 2, j
    assert "requeued" in d.log() or "re-queued" in d.log()
    d.stop()


def test_worker_crash_fails_job_and_worker_restarts(tmp_path):
    with Daemon(tmp_path, "crash") as d:
        bad = d.submit(tiny_generate(prompt=CRASH, steps=3))
        after = d.submit(tiny_generate(steps=1))
        j = d.wait(bad["id"])
        assert j["state"] == "failed" and j["error"]["code"] == "worker_crashed", j
        assert "signal" in j["error"]["message"] and "restarted" in j["error"]["message"]
        assert d.wait(after["id"])["state"] == "succeeded"
        assert d.alive()
        assert "loco_worker_restarts_total 1" in d.get("/metrics").text


def test_device_fault_fails_job_and_restarts_worker(tmp_path):
    with Daemon(tmp_path, "fault") as d:
        bad = d.wait(d.submit(tiny_generate(prompt=DEVICE_FAULT))["id"])
        assert bad["state"] == "failed" and bad["error"]["code"] == "gpu_error", bad
        assert "fresh device context" in bad["error"]["message"]
        ok = d.wait(d.submit(tiny_generate(steps=1))["id"])
        assert ok["state"] == "succeeded"


def test_cancel_running_between_steps(tmp_path):
    with Daemon(tmp_path, "cancel") as d:
        job = d.submit(tiny_generate(prompt=SLOW, steps=40))
        d.wait_running(job["id"], min_step=2)
        t0 = time.time()
        r = d.post(f"/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 202
        j = d.wait(job["id"])
        assert j["state"] == "cancelled" and time.time() - t0 < 3, j
        assert j["result"] is None and j["artifacts"] == []
        assert d.wait(d.submit(tiny_generate(steps=1))["id"])["state"] == "succeeded"


def test_cancel_of_job_that_ignores_it_kills_worker(tmp_path):
    with Daemon(tmp_path, "hang", extra={"worker": {"cancel_grace_ms": 500}}) as d:
        job = d.submit(tiny_generate(prompt=HANG, steps=5))
        d.wait_running(job["id"])
        assert d.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        j = d.wait(job["id"], timeout=30)
        assert j["state"] == "cancelled" and "did not stop" in j["error"]["message"], j
        assert d.wait(d.submit(tiny_generate(steps=1))["id"])["state"] == "succeeded"


def test_graceful_stop_and_restart_keeps_queue_and_the_running_job(tmp_path):
    """SIGTERM is a routine restart: the queue resumes in order, and the job that was running goes
    back to the queue and runs again from the start (it used to fail with server_restart, which
    is now only for what a graceful stop cannot clean up: kill -9, a crash)."""
    d = Daemon(tmp_path, "term").start()
    blocker = d.submit(tiny_generate(prompt=SLOW, steps=30))
    queued = [d.submit(tiny_generate(steps=1, seed=i))["id"] for i in range(3)]
    d.wait_running(blocker["id"])
    assert d.stop() == 0
    assert "re-queued" in d.log()
    d.start()
    b = d.wait(blocker["id"], timeout=180)
    assert b["state"] == "succeeded" and b["error"] is None, b
    for q in queued:
        assert d.wait(q)["state"] == "succeeded"
    d.stop()


def test_second_daemon_on_same_data_dir_refuses(tmp_path):
    with Daemon(tmp_path, "first") as d:
        job = d.submit(tiny_generate(prompt=SLOW, steps=8))
        d.wait_running(job["id"])
        d2 = Daemon(tmp_path, "second", extra={"data_dir": str(d.data)})
        try:
            d2.start()
            raise AssertionError("a second locod started on the same data dir:\n" + d2.log())
        except RuntimeError:
            pass
        assert d2.proc.returncode != 0
        assert f"data dir {d.data} is in use by another locod (pid {d.proc.pid})" in d2.log(), d2.log()
        d2.logf.close()
        j = d.wait(job["id"])
        assert j["state"] == "succeeded", j
        assert d.get(j["result"]["images"][0]["url"]).status_code == 200


def test_models_loaded_through_the_api_load_again_after_restart(tmp_path):
    d = Daemon(tmp_path, "resident").start()
    assert d.post("/v1/models/sd2-tiny/load").status_code in (200, 202)
    deadline = time.time() + 60
    while d.get("/v1/models/sd2-tiny").json()["state"] != "loaded":
        assert time.time() < deadline, d.log()[-2000:]
        time.sleep(0.05)
    blocker = d.submit(tiny_generate(prompt=SLOW, steps=20))
    queued = d.submit({**tiny_generate(steps=1), "model": "sd2-tiny"})
    d.wait_running(blocker["id"])
    d.kill9()
    d.start()
    # the job queued for the API-loaded model finds it resident again
    j = d.wait(queued["id"])
    assert j["state"] == "succeeded", j
    assert d.get("/v1/models/sd2-tiny").json()["state"] == "loaded"
    # unloaded through the API: a restart leaves it unloaded
    assert d.post("/v1/models/sd2-tiny/unload").status_code in (200, 202)
    deadline = time.time() + 30
    while d.get("/v1/models/sd2-tiny").json()["state"] != "available":
        assert time.time() < deadline
        time.sleep(0.05)
    assert d.stop() == 0
    d.start()
    assert d.get("/v1/models/sd2-tiny").json()["state"] == "available"
    assert d.get("/v1/models/sd1-tiny").json()["state"] == "loaded"
    d.stop()


def test_readyz_reports_a_start_up_model_that_failed_to_load(tmp_path):
    root = tmp_path / "roots"
    (root / "broken-model").mkdir(parents=True)
    (root / "broken-model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    d = Daemon(tmp_path, "ready", load=("sd1-tiny", "broken-model"),
               extra={"model_roots": [str(MODELS), str(root)]}).start(wait_models=False)
    deadline = time.time() + 60
    while True:
        r = d.get("/readyz")
        reasons = r.json()["reasons"]
        if any("broken-model failed to load" in x for x in reasons):
            break
        assert time.time() < deadline, (r.status_code, r.text)
        time.sleep(0.05)
    assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
    assert d.get("/v1/models/broken-model").json()["state"] == "failed"
    # the other start-up model serves meanwhile
    assert d.wait(d.submit(tiny_generate(steps=1))["id"])["state"] == "succeeded"
    # an admin sets the broken model aside: ready again
    assert d.post("/v1/models/broken-model/unload").status_code == 200
    r = d.get("/readyz")
    assert r.status_code == 200 and r.json()["reasons"] == [], r.text
    d.stop()

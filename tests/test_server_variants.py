"""Variants left by edit jobs survive restarts: the daemon records each one (base, delta artifact)
and re-creates it from the base and the delta when a worker starts, so a variant generates the
same bytes after a worker crash or a kill -9 + restart of the daemon as before. Deleting a variant
(POST .../unload) drops the record; retention keeps a live variant's delta; a variant whose delta
is gone fails with a clear error."""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import Daemon, problem, tiny_generate  # noqa: E402

EDITS = {
    # no target: the default ("a painting") is filled in and shown in the variant's edit summary
    "sd1-tiny-loco": {"method": "locoedit", "concept": "van gogh", "layers": [4, 5]},
    # neuron edits are ablations, not weights: the delta carries them too
    "sd1-tiny-neuron": {"method": "neuron", "layers": [4, 5], "neurons": 4,
                        "prompts": ["a house by van gogh", "a tree by van gogh"],
                        "normal_prompts": ["a house", "a tree"]},
}


def edit(d, name, params):
    j = d.wait(d.submit({"kind": "edit", "model": "sd1-tiny", "params": {**params, "variant": name}})["id"],
               timeout=120)
    assert j["state"] == "succeeded", j
    return j


def image(d, model):
    j = d.wait(d.submit({**tiny_generate(prompt="a house by van gogh", steps=2, seed=3), "model": model})["id"])
    assert j["state"] == "succeeded", j
    return d.get(j["result"]["images"][0]["url"]).content


def wait_state(d, name, states, timeout=60):
    deadline = time.time() + timeout
    while True:
        r = d.get(f"/v1/models/{name}")
        if r.status_code == 200 and r.json()["state"] in states:
            return r.json()
        assert time.time() < deadline, (r.status_code, r.text, d.log()[-3000:])
        time.sleep(0.05)


def worker_pid(d):
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def kill_worker(d, restarts):
    os.kill(worker_pid(d), signal.SIGKILL)
    deadline = time.time() + 30
    while f"loco_worker_restarts_total {restarts}" not in d.get("/metrics").text:
        assert time.time() < deadline
        time.sleep(0.05)


def test_variants_survive_worker_crash_and_daemon_kill9(tmp_path):
    d = Daemon(tmp_path, "vk").start()
    jobs, before = {}, {}
    for name, params in EDITS.items():
        jobs[name] = edit(d, name, params)
        before[name] = image(d, name)
    assert before["sd1-tiny-loco"] != image(d, "sd1-tiny"), "the edit changed nothing"
    v = d.get("/v1/models/sd1-tiny-loco").json()
    assert v["variant"]["durable"] is True
    assert v["variant"]["delta_sha256"] == jobs["sd1-tiny-loco"]["result"]["delta"]["sha256"]
    assert v["variant"]["job"] == jobs["sd1-tiny-loco"]["id"] and v["variant"]["edit"]["method"] == "locoedit"
    assert v["variant"]["edit"]["target"] == "a painting", v["variant"]["edit"]
    assert jobs["sd1-tiny-loco"]["params"]["target"] == "a painting", jobs["sd1-tiny-loco"]["params"]
    assert d.get("/v1/models/sd1-tiny-neuron").json()["variant"]["edit"]["n_prompts"] == 2

    kill_worker(d, 1)
    for name in EDITS:
        wait_state(d, name, {"loaded"})
        assert image(d, name) == before[name], f"{name} differs after the worker restarted"

    d.kill9()
    d.start()
    listed = {m["name"]: m for m in d.get("/v1/models/sd1-tiny/variants").json()["variants"]}
    assert set(EDITS) <= set(listed), listed
    for name in EDITS:
        assert wait_state(d, name, {"loaded"})["variant"]["created_at"]
        assert image(d, name) == before[name], f"{name} differs after kill -9 and restart"
    assert {m["name"] for m in d.get("/v1/models").json()["models"]} >= set(EDITS)
    d.stop()


def test_job_queued_right_after_restart_waits_for_the_variant(tmp_path):
    d = Daemon(tmp_path, "vq").start()
    edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
    want = image(d, "sd1-tiny-loco")
    d.stop()
    d.start(wait_models=False)
    # accepted while the base and the variant are still loading; runs once the variant is back
    assert image(d, "sd1-tiny-loco") == want
    d.stop()


def test_deleted_variant_stays_deleted(tmp_path):
    d = Daemon(tmp_path, "vd").start()
    edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
    assert d.post("/v1/models/sd1-tiny-loco/unload").status_code in (200, 202)
    deadline = time.time() + 30
    while d.get("/v1/models/sd1-tiny-loco").status_code != 404:
        assert time.time() < deadline
        time.sleep(0.05)
    d.stop()
    d.start()
    problem(d.get("/v1/models/sd1-tiny-loco"), 404, "unknown_model")
    assert d.get("/v1/models/sd1-tiny/variants").json() == {"variants": []}
    # the name is free again
    edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
    d.stop()


def test_base_unload_keeps_variant_and_reload_brings_it_back(tmp_path):
    with Daemon(tmp_path, "vb") as d:
        edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
        want = image(d, "sd1-tiny-loco")
        assert d.post("/v1/models/sd1-tiny/unload").status_code in (200, 202)
        wait_state(d, "sd1-tiny", {"available"})
        assert wait_state(d, "sd1-tiny-loco", {"available"})["variant"]["durable"] is True
        problem(d.post("/v1/jobs", {**tiny_generate(), "model": "sd1-tiny-loco"}), 409, "model_not_loaded")
        # loading the variant loads its base first
        assert d.post("/v1/models/sd1-tiny-loco/load").status_code in (200, 202)
        wait_state(d, "sd1-tiny-loco", {"loaded"})
        assert d.get("/v1/models/sd1-tiny").json()["state"] == "loaded"
        assert image(d, "sd1-tiny-loco") == want


def test_retention_keeps_a_live_variants_delta(tmp_path):
    d = Daemon(tmp_path, "vr", extra={"retention": {"jobs_s": 1, "sweep_interval_s": 1}}).start()
    j = edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
    want = image(d, "sd1-tiny-loco")
    delta = j["result"]["delta"]["url"]
    report = j["result"]["report_artifact"]["url"] if "report_artifact" in j["result"] else None
    deadline = time.time() + 20
    while d.get(f"/v1/jobs/{j['id']}").status_code != 410:
        assert time.time() < deadline
        time.sleep(0.2)
    assert d.get(delta).status_code == 200, "retention pruned the delta of a live variant"
    if report:
        assert d.get(report).status_code == 404  # the job's other artifacts do go
    d.kill9()
    d.start()
    wait_state(d, "sd1-tiny-loco", {"loaded"})
    assert image(d, "sd1-tiny-loco") == want
    # deleting the variant releases its delta (no job links it any more)
    assert d.post("/v1/models/sd1-tiny-loco/unload").status_code in (200, 202)
    deadline = time.time() + 30
    while d.get(delta).status_code != 404:
        assert time.time() < deadline
        time.sleep(0.1)
    d.stop()


def test_variant_whose_delta_is_gone_fails_clearly(tmp_path):
    d = Daemon(tmp_path, "vg").start()
    j = edit(d, "sd1-tiny-loco", EDITS["sd1-tiny-loco"])
    sha = j["result"]["delta"]["sha256"]
    d.stop()
    (d.data / "artifacts" / sha[:2] / sha).unlink()
    d.start()
    v = wait_state(d, "sd1-tiny-loco", {"failed"})
    assert sha in v["error"] and "edit again" in v["error"], v
    p = problem(d.post("/v1/jobs", {**tiny_generate(), "model": "sd1-tiny-loco"}), 409, "model_not_loaded")
    assert sha in p["detail"]
    assert d.wait(d.submit(tiny_generate(steps=1))["id"])["state"] == "succeeded"  # the base is fine
    assert d.post("/v1/models/sd1-tiny-loco/unload").status_code == 200
    problem(d.get("/v1/models/sd1-tiny-loco"), 404, "unknown_model")
    d.stop()


def test_unloading_a_base_with_two_variants_fails_their_queued_jobs_alike(tmp_path):
    from locod_harness import SLOW
    with Daemon(tmp_path, "v2") as d:
        edit(d, "keepme", EDITS["sd1-tiny-loco"])
        edit(d, "second", EDITS["sd1-tiny-loco"])
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=20))
        queued = [d.submit({**tiny_generate(steps=1), "model": m})["id"] for m in ("keepme", "second")]
        d.wait_running(blocker["id"])
        assert d.post("/v1/models/sd1-tiny/unload").status_code in (200, 202)
        for jid in queued:
            j = d.wait(jid, timeout=120)
            # both as the contract says: retryable model_not_loaded, never a worker-side job_error
            assert j["state"] == "failed" and j["error"]["code"] == "model_not_loaded", j
            assert j["error"]["retryable"] is True, j


def test_a_job_queued_for_a_variant_deleted_meanwhile_fails_for_good(tmp_path):
    """Unloading a variant deletes it: a job queued for it fails with unknown_model, not
    retryable, instead of a retryable model_not_loaded whose advice (load it) gives 404."""
    from locod_harness import SLOW
    with Daemon(tmp_path, "vdel") as d:
        edit(d, "gone", EDITS["sd1-tiny-loco"])
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=20))
        queued = d.submit({**tiny_generate(steps=1), "model": "gone"})["id"]
        d.wait_running(blocker["id"])
        assert d.post("/v1/models/gone/unload").status_code in (200, 202)
        j = d.wait(queued, timeout=120)
        assert j["state"] == "failed" and j["error"]["code"] == "unknown_model", j
        assert j["error"]["retryable"] is False and "edit again" in j["error"]["message"], j


def test_a_variant_whose_base_fails_to_load_fails_with_the_bases_reason(tmp_path):
    """A client polls a variant's load until 'loaded' or 'failed': when its base cannot load the
    variant fails, with the base's reason (it stayed 'available' with no error)."""
    import shutil
    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parent / "fixtures" / "models" / "sd1-tiny", models / "base")
    with Daemon(tmp_path, "vbf", load=("base",), extra={"model_roots": [str(models)]}) as d:
        j = d.wait(d.submit({"kind": "edit", "model": "base",
                             "params": {**EDITS["sd1-tiny-loco"], "variant": "vbf-var"}})["id"], timeout=120)
        assert j["state"] == "succeeded", j
        assert d.post("/v1/models/base/unload").status_code in (200, 202)
        wait_state(d, "base", {"available"})
        vae = models / "base" / "vae" / "diffusion_pytorch_model.safetensors"
        vae.write_bytes(vae.read_bytes()[:100])  # truncated: the base cannot load any more
        assert d.post("/v1/models/vbf-var/load").status_code in (200, 202)
        v = wait_state(d, "vbf-var", {"failed"})
        assert "base model 'base' failed to load" in v["error"], v


def test_edits_beyond_the_workers_model_capacity_are_refused_when_posted(tmp_path):
    """Each edit leaves a resident variant and the worker holds at most 64 models: an edit that
    would go beyond, counting the queued ones, gets 409 model_capacity when posted (once full,
    every edit was accepted and then failed as 'unsupported', and admins could not load)."""
    from locod_harness import SLOW
    with Daemon(tmp_path, "vcap") as d:
        blocker = d.submit(tiny_generate(prompt=SLOW, steps=30))
        d.wait_running(blocker["id"])
        queued = [d.submit({"kind": "edit", "model": "sd1-tiny",
                            "params": {**EDITS["sd1-tiny-loco"], "variant": f"cap{i}"}})["id"] for i in range(63)]
        p = problem(d.post("/v1/jobs", {"kind": "edit", "model": "sd1-tiny",
                                        "params": {**EDITS["sd1-tiny-loco"], "variant": "cap63"}}), 409,
                    "model_capacity")
        assert "at most 64" in p["detail"] and "unload" in p["detail"], p
        # generate jobs are not affected
        assert d.post("/v1/jobs", tiny_generate(steps=1)).status_code == 202
        for jid in queued + [blocker["id"]]:
            d.post(f"/v1/jobs/{jid}/cancel")


def test_folder_export_is_a_diffusers_folder_that_generates_the_variants_image(tmp_path):
    import json
    import subprocess
    from locod_harness import LOCOD
    with Daemon(tmp_path, "vf") as d:
        j = d.wait(d.submit({"kind": "edit", "model": "sd1-tiny",
                             "params": {**EDITS["sd1-tiny-loco"], "variant": "sd1-tiny-folder",
                                        "export": "folder"}})["id"], timeout=120)
        assert j["state"] == "succeeded", j
        assert j["result"]["delta"]["sha256"], j["result"]
        files = j["result"]["folder"]["files"]
        paths = [f["path"] for f in files]
        assert paths == sorted(paths) and "model_index.json" in paths, paths
        assert "unet/diffusion_pytorch_model.safetensors" in paths and "tokenizer/vocab.json" in paths, paths
        out = tmp_path / "exported"
        for f in files:
            body = d.get(f["url"]).content
            assert len(body) == f["size"], f
            (out / f["path"]).parent.mkdir(parents=True, exist_ok=True)
            (out / f["path"]).write_bytes(body)
        json.loads((out / "model_index.json").read_text())
        want = image(d, "sd1-tiny-folder")
        assert want != image(d, "sd1-tiny"), "the edit changed nothing"
        # neuron edits cannot be a folder: refused before they run
        problem(d.post("/v1/jobs", {"kind": "edit", "model": "sd1-tiny",
                                    "params": {**EDITS["sd1-tiny-neuron"], "export": "folder"}}), 422, "invalid_value")
    # the folder alone, through the CLI, gives the variant's image bit for bit
    png = tmp_path / "cli.png"
    r = subprocess.run([str(LOCOD.parent / "loco"), "generate", "--model", str(out), "--prompt", "a house by van gogh",
                        "--steps", "2", "--seed", "3", "--width", "64", "--height", "64", "--threads", "1",
                        "--device", "cpu", "--output", str(png)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert png.read_bytes() == want, "the exported folder does not generate the variant's image"

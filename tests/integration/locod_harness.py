"""Starts real locod daemons on loopback for the HTTP tests (tests/test_server_*.py).

Each Daemon gets its own config file, data directory and a free port (the daemon binds port 0
and writes the port it got to a file), so several run side by side. The worker runs on the CPU
with the tiny fixture models. LOCO_BUILD selects the build folder (build, or build-asan for the
AddressSanitizer run); with ASan, the daemon's log is checked for sanitizer reports."""
import hashlib
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / os.environ.get("LOCO_BUILD", "build")
LOCOD = BUILD / "locod"
MODELS = ROOT / "tests" / "fixtures" / "models"

SLOW = "__loco_test_slow__"      # 200 ms per step (LOCOD_TEST_FAULTS=1)
CRASH = "__loco_test_crash__"    # the worker aborts after the first step
HANG = "__loco_test_hang__"      # the worker ignores cancel after the first step
DEVICE_FAULT = "__loco_test_device_fault__"

TERMINAL = {"succeeded", "failed", "cancelled"}


def key_hash(key):
    return hashlib.sha256(key.encode()).hexdigest()


def tiny_generate(prompt="a red cube on a table", steps=2, size=64, **extra):
    params = {"prompt": prompt, "steps": steps, "width": size, "height": size, "seed": 1}
    params.update(extra)
    return {"kind": "generate", "model": "sd1-tiny", "params": params}


class Daemon:
    def __init__(self, tmp_path, name="d", keys=None, load=("sd1-tiny",), extra=None, env=None, nofile=None):
        self.dir = Path(tmp_path) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.port_file = self.dir / "port"
        self.log_path = self.dir / "locod.log"
        self.keys = keys or {}
        cfg = {
            "listen": "127.0.0.1:0",
            "data_dir": str(self.data),
            "device": "cpu",
            "threads": 1,
            "model_roots": [str(MODELS)],
            "load_at_start": list(load),
            "clip_scorer": str(MODELS / "clip-tiny"),
            "port_file": str(self.port_file),
            "log_level": "info",
            "limits": {"max_steps": 50, "max_side": 256, "max_batch": 4, "max_body_bytes": 65536, "max_pixels": 65536,
                       "max_prompt_chars": 500},
            "queue": {"max_queued": 500, "max_pending_per_key": 300, "retry_after_s": 2},
            "worker": {"restart_backoff_ms": 100, "cancel_grace_ms": 3000},
            "sse": {"keepalive_ms": 1000},
        }
        if self.keys:
            cfg["keys"] = [{"id": k, "sha256": key_hash(v["key"]), "admin": v.get("admin", False),
                            **({"max_pending": v["max_pending"]} if "max_pending" in v else {})}
                           for k, v in self.keys.items()]
        for k, v in (extra or {}).items():
            if v is None:
                cfg.pop(k, None)
            elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
        self.config = self.dir / "locod.json"
        self.config.write_text(json.dumps(cfg, indent=2))
        self.env = dict(os.environ, LOCOD_TEST_FAULTS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.env.update(env or {})
        self.nofile = nofile  # (soft, hard) open-file limit the daemon starts under, as `ulimit -n`
        self.proc = None
        self.port = None
        self.s = requests.Session()

    # ---- process ------------------------------------------------------------------------------
    def start(self, wait_models=True, args=()):
        if self.port_file.exists():
            self.port_file.unlink()
        self.logf = open(self.log_path, "ab")
        nofile = self.nofile
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        self.proc = subprocess.Popen([str(LOCOD), "--config", str(self.config), *args],
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT),
                                     preexec_fn=limit)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"locod exited with {self.proc.returncode}:\n{self.log()}")
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("locod did not start:\n" + self.log())
        if wait_models:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = self.s.get(self.url("/readyz"), timeout=5)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("locod not ready:\n" + self.log())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.logf.close()
        self.check_sanitizers()
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.logf.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_sanitizers(self):
        text = self.log()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert bad not in text, text[text.find(bad) - 200:][:6000]

    def alive(self):
        return self.proc.poll() is None and self.get("/healthz").status_code == 200

    # ---- HTTP ---------------------------------------------------------------------------------
    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def headers(self, key=None, extra=None):
        h = {}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        h.update(extra or {})
        return h

    def get(self, path, key=None, **kw):
        return self.s.get(self.url(path), headers=self.headers(key, kw.pop("headers", None)), timeout=30, **kw)

    def post(self, path, body=None, key=None, **kw):
        h = self.headers(key, kw.pop("headers", None))
        if body is not None and "data" not in kw:
            kw["data"] = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        return self.s.post(self.url(path), headers=h, timeout=30, **kw)

    def submit(self, body, key=None, expect=202, **kw):
        r = self.post("/v1/jobs", body, key=key, **kw)
        assert r.status_code == expect, (r.status_code, r.text)
        return r.json()

    def job(self, job_id, key=None):
        r = self.get(f"/v1/jobs/{job_id}", key=key)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait(self, job_id, key=None, timeout=60, states=TERMINAL):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(job_id, key)
            if j["state"] in states:
                return j
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {j['state']} after {timeout}s\n{self.log()[-3000:]}")

    def wait_running(self, job_id, key=None, min_step=1, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(job_id, key)
            if j["state"] == "running" and j["progress"] and j["progress"]["step"] >= min_step:
                return j
            if j["state"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended before running: {j}")
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never ran")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def problem(r, status, code=None):
    """Assert r is an application/problem+json answer with this status (and code)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    p = r.json()
    assert p["status"] == status and p["detail"] and p["type"].startswith("/problems/"), p
    if code:
        assert p["code"] == code, p
    return p


def schema_validator(name):
    """A jsonschema validator for proto/schemas/<name>, its $refs resolved among the other files."""
    import jsonschema
    from referencing import Registry, Resource
    docs = {p.name: json.loads(p.read_text()) for p in (ROOT / "proto" / "schemas").glob("*.json")}
    registry = Registry().with_resources((name_, Resource.from_contents(doc)) for name_, doc in docs.items())
    return jsonschema.Draft202012Validator(docs[name], registry=registry)

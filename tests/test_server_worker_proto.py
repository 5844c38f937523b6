"""The daemon <-> worker pipe (server/worker_proto.h), driven directly: `locod --worker` is started
with its stdin and fd 3 as pipes, so a test controls exactly which bytes arrive in one read."""
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "integration"))
from locod_harness import LOCOD, MODELS, SLOW  # noqa: E402


class Worker:
    def __init__(self, tmp_path):
        (tmp_path / "artifacts" / "tmp").mkdir(parents=True, exist_ok=True)  # the daemon makes it
        r, self.msg_w = os.pipe()
        self.msg_r = r
        env = dict(os.environ, LOCOD_TEST_FAULTS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.log_path = tmp_path / "worker.log"
        self.log = open(self.log_path, "wb")
        # fd 3 in the child is the message pipe (LOCOD_WORKER_MSG_FD); preexec_fn runs before
        # Popen closes fds, so 3 must be in pass_fds too
        self.proc = subprocess.Popen(
            [str(LOCOD), "--worker", "--device", "cpu", "--threads", "1", "--artifacts", str(tmp_path / "artifacts"),
             "--test-faults"],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, env=env,
            pass_fds=(self.msg_w, 3), preexec_fn=lambda: os.dup2(self.msg_w, 3))
        os.close(self.msg_w)
        self.buf = b""

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, *msgs):
        """All messages in one write, so the worker gets them in one read."""
        self.send_raw(b"".join(json.dumps(m).encode() + b"\n" for m in msgs))

    def next_event(self, timeout=60):
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.time()
            assert left > 0, "no message from the worker in time"
            ready, _, _ = select.select([self.msg_r], [], [], left)
            if ready:
                chunk = os.read(self.msg_r, 65536)
                assert chunk, "the worker closed its message pipe"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def wait_for(self, ev, timeout=60):
        while True:
            m = self.next_event(timeout)
            if m.get("ev") == ev:
                return m

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        os.close(self.msg_r)
        self.log.close()
        text = self.log_path.read_text(errors="replace")  # LOCO_BUILD=build-asan: no sanitizer report
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert bad not in text, text[-4000:]


def slow_run(job, steps):
    params = {"prompt": SLOW, "steps": steps, "width": 64, "height": 64, "seed": 1}
    return {"op": "run", "job": job, "kind": "generate", "model": "sd1-tiny", "params": params}


def test_cancel_in_same_read_as_run_is_honoured(tmp_path):
    """A cancel the daemon sends right after `run` may reach the worker in the same read, before
    the job has started; it must still stop the job (not be dropped, which left the job to run
    on until the daemon killed the worker after cancel_grace_ms)."""
    w = Worker(tmp_path)
    try:
        assert w.wait_for("ready")["ev"] == "ready"
        w.send({"op": "load", "model": "sd1-tiny", "path": str(MODELS / "sd1-tiny")})
        assert w.wait_for("loaded")["ok"] is True
        t0 = time.time()
        w.send(slow_run("job-a", 40), {"op": "cancel", "job": "job-a"})  # 40 x 200 ms if ignored
        done = w.wait_for("done", timeout=30)
        assert done["job"] == "job-a" and done["ok"] is False, done
        assert done["error"]["code"] == "cancelled", done
        assert time.time() - t0 < 3
        # a cancel for job-a must not leak onto the next job
        w.send(slow_run("job-b", 1))
        done = w.wait_for("done", timeout=30)
        assert done["job"] == "job-b" and done["ok"] is True, done
    finally:
        w.close()


def test_message_split_across_reads_and_several_in_one_read(tmp_path):
    """Bytes after the first line of a read are kept for the next parse, and a line split over
    two writes is parsed whole."""
    w = Worker(tmp_path)
    try:
        w.wait_for("ready")
        load = json.dumps({"op": "load", "model": "sd1-tiny", "path": str(MODELS / "sd1-tiny")}).encode() + b"\n"
        w.send_raw(load[:10])
        time.sleep(0.2)
        w.send_raw(load[10:] + load)  # the rest, then the same load again in the same write
        assert w.wait_for("loaded")["ok"] is True
        assert w.wait_for("loaded")["ok"] is True
        w.send(slow_run("j1", 1), slow_run("j2", 1))
        assert w.wait_for("done")["job"] == "j1"
        assert w.wait_for("done")["job"] == "j2"
    finally:
        w.close()


def test_a_job_stopped_after_storing_files_reports_them(tmp_path):
    """Files a job stored before it stopped (images encoded before a cancel) come back with its
    failure, so the daemon links them to the job and retention removes them with it (they were
    left in the store for good)."""
    w = Worker(tmp_path)
    try:
        w.wait_for("ready")
        w.send({"op": "load", "model": "sd1-tiny", "path": str(MODELS / "sd1-tiny")})
        assert w.wait_for("loaded")["ok"] is True
        run = slow_run("j-png", 1)
        run["params"]["batch"] = 3
        w.send(run)
        while True:  # SLOW makes each report take 200 ms: the cancel lands between two images
            m = w.wait_for("progress")
            if m.get("phase") == "encode_png" and m.get("step", 0) >= 1:
                break
        w.send({"op": "cancel", "job": "j-png"})
        done = w.wait_for("done", timeout=30)
        assert done["ok"] is False and done["error"]["code"] == "cancelled", done
        arts = done.get("artifacts") or []
        assert 1 <= len(arts) < 3, done
        for a in arts:
            assert (tmp_path / "artifacts" / a["sha256"][:2] / a["sha256"]).is_file(), a
    finally:
        w.close()

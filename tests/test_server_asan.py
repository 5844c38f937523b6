"""The daemon's own tests, again, with locod built with AddressSanitizer + UBSan.

This builds build-asan/ (C only: LOCO_CUDA=0 skips nvcc, which ASan cannot see into anyway) and
runs the daemon test files against it in a child pytest. The harness
(tests/integration/locod_harness.py) fails any test whose daemon log holds a sanitizer report,
so a leak, an overflow or undefined behaviour in locod or its worker fails here. The heaviest
files (schemathesis, 100 concurrent clients) run only in the plain build to keep `make test`
short; their code paths are covered here by the job-life, bad-request and recovery files."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASAN_BUILD = "build-asan"
FILES = ["tests/test_server_jobs.py", "tests/test_server_bad_requests.py", "tests/test_server_recovery.py"]


@pytest.mark.skipif(os.environ.get("LOCO_BUILD", "build") == ASAN_BUILD, reason="already the ASan run")
def test_daemon_tests_pass_under_asan():
    build = subprocess.run(
        ["make", "-j2", f"BUILD={ASAN_BUILD}", "LOCO_CUDA=0", "OPT=-O1",
         "SANITIZE=-fsanitize=address,undefined -fno-omit-frame-pointer", f"{ASAN_BUILD}/locod"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    env = dict(os.environ, LOCO_BUILD=ASAN_BUILD,
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *FILES],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout.splitlines()[-1], tail

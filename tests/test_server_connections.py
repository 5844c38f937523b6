"""locod's connections against the limits of the machine and against slow clients: the open-file
limit fitted to limits.max_connections at start (raised, or the connections lowered with a warning),
an artifact that cannot be opened for lack of descriptors answered 503 (never 404), and one client
address kept to limits.max_connections_per_ip so a slow client cannot lock everyone else out."""
import os
import re
import resource
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from locod_harness import Daemon, problem, tiny_generate  # noqa: E402

RESERVE, PER_CONNECTION = 32, 2  # server/fd_limit.h


def metric(d, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", d.get("/metrics").text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def soft_nofile(pid):
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def test_low_hard_open_file_limit_lowers_max_connections_with_a_warning(tmp_path):
    """Under `ulimit -n 64` (soft and hard) 100 connections cannot be served (each needs a socket
    and maybe an artifact file): the daemon serves what fits, (64 - 32) / 2 = 16, with the derived
    caps following, and its warning names the limit and what to change."""
    with Daemon(tmp_path, "low", extra={"limits": {"max_connections": 100}}, nofile=(64, 64)) as d:
        fit = (64 - RESERVE) // PER_CONNECTION
        log = d.log()
        assert "open-file limit is 64 (hard limit 64)" in log, log
        assert f"limits.max_connections 100 needs {100 * PER_CONNECTION + RESERVE}" in log, log
        assert f"serving at most {fit} connections (event streams {fit // 2}, per client address {fit - fit // 4})" in log
        assert "LimitNOFILE=" in log and "ulimit -Hn" in log, log
        assert metric(d, 'loco_http_connection_limit{scope="total"}') == fit
        assert metric(d, 'loco_http_connection_limit{scope="per_address"}') == fit - fit // 4
        assert metric(d, "loco_open_files_limit") == 64
        job = d.submit(tiny_generate(steps=1))
        assert d.wait(job["id"])["state"] == "succeeded"


def test_soft_open_file_limit_is_raised_towards_the_hard_limit(tmp_path):
    """A soft limit below what max_connections needs is raised, as far as needed, when the hard
    limit allows it; the connections stay as configured."""
    need = 100 * PER_CONNECTION + RESERVE
    with Daemon(tmp_path, "raise", extra={"limits": {"max_connections": 100}}, nofile=(64, 4096)) as d:
        assert soft_nofile(d.proc.pid) == need
        assert f"raised the open-file limit from 64 to {need} for 100 connections" in d.log(), d.log()
        assert "serving at most" not in d.log()
        assert metric(d, 'loco_http_connection_limit{scope="total"}') == 100
        assert metric(d, "loco_open_files_limit") == need


def test_open_file_limit_too_low_for_any_server_refuses_to_start(tmp_path):
    d = Daemon(tmp_path, "hopeless", load=(), nofile=(36, 36))
    with pytest.raises(RuntimeError, match=r"open-file limit \(ulimit -n\) is 36"):
        d.start()
    d.logf.close()


def lowest_free_fd(pid):
    used = {int(f) for f in os.listdir(f"/proc/{pid}/fd")}
    return next(i for i in range(len(used) + 1) if i not in used)


def test_artifact_that_cannot_be_opened_for_now_is_503_not_404(tmp_path):
    """Out of descriptors (EMFILE), an existing artifact used to answer 404 unknown_artifact 'no
    longer stored'; it is 503 + Retry-After with a detail saying it is temporary. The daemon's soft
    limit is cut under it (prlimit) while a keep-alive connection is already open, so the next
    open() fails; restored, the same connection gets the file."""
    with Daemon(tmp_path, "emfile") as d:
        job = d.wait(d.submit(tiny_generate(steps=1))["id"])
        sha = job["result"]["images"][0]["sha256"]
        s = requests.Session()
        url = d.url(f"/v1/artifacts/{sha}")
        assert s.get(url, timeout=10).status_code == 200
        pid = d.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), hard))
        try:
            r = s.get(url, timeout=10)
            h = s.head(url, timeout=10)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        p = problem(r, 503, "artifact_unavailable")
        assert int(r.headers["Retry-After"]) > 0 and "temporary" in p["detail"] and sha in p["detail"], p
        assert h.status_code == 503 and int(h.headers["Retry-After"]) > 0
        r = s.get(url, timeout=10)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert "cannot open artifact" in d.log()


def slow_client(port, source, n):
    """n connections from address `source`, each stopped in the middle of its headers (a
    slowloris client, which would go on sending a byte now and then)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def closed_by_server(s, wait=1.0):
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_one_client_address_cannot_take_every_connection(tmp_path):
    """A slow client on 127.0.0.2 opening max_connections (16) connections and sending half its
    headers used to hold every connection: every other client waited unanswered. Now it gets
    limits.max_connections_per_ip (default 16 - 16 / 4 = 12), the rest are closed at once and
    counted, and a client on 127.0.0.1 is served."""
    with Daemon(tmp_path, "slowloris", load=(), extra={"limits": {"max_connections": 16}}) as d:
        socks = slow_client(d.port, "127.0.0.2", 16)
        try:
            refused = sum(closed_by_server(s) for s in socks)
            assert refused == 4, f"{refused} of 16 slow connections from one address were refused, not 4"
            t0 = time.time()
            r = requests.get(d.url("/healthz"), timeout=5)
            assert r.status_code == 200 and time.time() - t0 < 2
            assert metric(d, "loco_http_connections_refused_total") == 4
            assert metric(d, "loco_http_connections") >= 12
            assert "refused a new connection unanswered" in d.log()
            assert "limits.max_connections_per_ip (12)" in d.log()
        finally:
            for s in socks:
                s.close()


def test_a_full_server_is_logged_and_counted(tmp_path):
    """When every connection is in use new clients wait unanswered in the listen backlog, which
    from outside looks like a hang: the daemon says so in its log and counts it."""
    limits = {"max_connections": 8, "max_connections_per_ip": 0}
    with Daemon(tmp_path, "full", load=(), extra={"limits": limits}) as d:
        socks = slow_client(d.port, "127.0.0.2", 8)
        try:
            deadline = time.time() + 10
            while "all 8 connections (limits.max_connections) are in use" not in d.log():
                assert time.time() < deadline, d.log()
                time.sleep(0.05)
        finally:
            for s in socks:
                s.close()
        deadline = time.time() + 10
        while True:  # the slots free as the daemon notices the closed sockets
            try:
                assert metric(d, "loco_http_connections_full_total") >= 1
                break
            except requests.RequestException:
                assert time.time() < deadline
                time.sleep(0.1)

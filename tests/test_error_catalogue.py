"""server/README.md's "Error codes" tables name every code the daemon can send, and nothing it
cannot: the problem codes of refused requests (locod_problem, loco_proto_fail) and the job error
codes of accepted jobs that failed (the worker's error_code(), the supervisor's locod_finish_job,
the store's restart recovery). Read from the sources, so a new code without a line in the
catalogue fails here."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sources(*globs):
    return "\n".join(p.read_text() for g in globs for p in sorted(ROOT.glob(g)))


def catalogue():
    text = (ROOT / "server" / "README.md").read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    problem_part, job_part = section.split("A job that was accepted and then failed", 1)
    def codes(part, column):
        return {c for line in part.splitlines() if line.startswith("|")
                for c in re.findall(r"`([a-z_]+)`", line.split("|")[column])}
    return codes(problem_part, 2), codes(job_part, 1)


def test_every_problem_code_is_in_the_catalogue_and_no_other():
    src = sources("server/*.c", "proto/*.c")
    sent = set(re.findall(r'locod_problem\(\w+, \d+, "([a-z_]+)"', src))
    sent |= set(re.findall(r'loco_proto_fail\(\w+, \d+, "([a-z_]+)"', src))
    sent.add("invalid_request")  # routes_jobs.c: the fallback when a check sets no code
    assert len(sent) > 25, sent  # the patterns still find the calls
    documented, _ = catalogue()
    assert sent - documented == set(), f"sent but not in server/README.md's catalogue: {sorted(sent - documented)}"
    assert documented - sent == set(), f"in the catalogue but never sent: {sorted(documented - sent)}"


def test_every_job_error_code_is_in_the_catalogue_and_no_other():
    worker = (ROOT / "server" / "worker_main.c").read_text()
    body = worker.split("static const char *error_code(", 1)[1].split("\n}", 1)[0]
    codes = set(re.findall(r'return "([a-z_]+)"', body))
    codes |= set(re.findall(r'LOCO_JOB_(?:FAILED|CANCELLED),\s*[\w>-]+,\s*"([a-z_]+)"', sources("server/*.c")))
    codes |= set(re.findall(r"error_code=CASE WHEN [^']*'([a-z_]+)' ELSE '([a-z_]+)' END",
                                   sources("server/store_sqlite.c"))[0])
    assert {"cancelled", "timeout", "worker_crashed", "server_restart"} <= codes, codes
    _, documented = catalogue()
    assert codes - documented == set(), f"job codes not in server/README.md's catalogue: {sorted(codes - documented)}"
    assert documented - codes == set(), f"in the catalogue but never set: {sorted(documented - codes)}"

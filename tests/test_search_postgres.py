"""Acceptance: `agebias search` workers on a real PostgreSQL server. A throw-away server is started from Debian's
`postgresql` binaries (initdb in a temporary folder, pg_ctl on a free local port; as an unprivileged user when the
tests run as root, since initdb refuses root); a login role and its database are created as README "Scaling out"
says; two workers join one study over ``postgresql+psycopg://``; one is SIGKILLed mid-trial. The study must hold
every finished trial, the killed trial must end FAIL (heartbeat) and pareto.json must describe the whole study."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_search_workers import REPO, make_generated_set

ROLE, PASSWORD, DATABASE = "searcher", "s3cret:pw", "studies"
PASSWORD_IN_URL = "s3cret%3Apw"  # ':' percent-encoded


def _server_bin() -> Path | None:
    """The bin folder of the newest installed PostgreSQL server (Debian layout first, then PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: tuple(int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """URL of a fresh database owned by a password login role on a throw-away server; stopped afterwards."""
    import psycopg

    bindir = _server_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql` "
                    "package (.ci/run does so when it can)")
    as_user: dict = {}
    owner = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        for name in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if owner is None:
            pytest.skip("running as root and neither user 'postgres' nor 'nobody' exists to own the server")
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="agebias-pg-"))  # short path: the unix socket name must fit 107 bytes
    admin_pw = root / "admin.pw"
    admin_pw.write_text("admin-pw\n")
    if owner is not None:
        for p in (root, admin_pw):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    port = _free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / args[0]), *args[1:]], env=env, cwd=root, capture_output=True, text=True,
                              timeout=60, **as_user)

    started = False
    try:
        done = pg("initdb", "-D", str(root / "data"), "-U", "admin", f"--pwfile={admin_pw}", "--auth=scram-sha-256",
                  "--locale=C", "--encoding=UTF8", "--no-sync")
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"
        done = pg("pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "30", "-o",
                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                  "start")
        started = done.returncode == 0
        log_text = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        assert started, f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{log_text}"
        # once per installation, as README "Scaling out" says: a login role and a database it owns
        with psycopg.connect(host="127.0.0.1", port=port, user="admin", password="admin-pw", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        yield f"postgresql+psycopg://{ROLE}:{PASSWORD_IN_URL}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            pg("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _worker(exp_file: Path, url: str, out: Path, trials: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "AGEBIAS_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "agebias", "search", str(exp_file), "--storage", url, "--study", "pg-demo",
           "--trials", str(trials), "--heartbeat", "1", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_and_survive_a_kill(tmp_path, postgres_url):
    import optuna

    data = make_generated_set(tmp_path / "data")
    text = (REPO / "experiments" / "search_demo.toml").read_text()
    exp_file = tmp_path / "search_demo.toml"
    exp_file.write_text(text.replace('synthetic = "../runs/demo/generate/data"', f'synthetic = "{data}"'))
    out_a, out_b = tmp_path / "machine_a", tmp_path / "machine_b"  # one output folder per machine
    victim = _worker(exp_file, postgres_url, out_a, 1, tmp_path)
    survivor = _worker(exp_file, postgres_url, out_b, 2, tmp_path)
    try:
        deadline = time.time() + 120
        while not list(out_a.glob("trials/*/params.json")):  # written as the trial starts, before training
            assert victim.poll() is None, victim.communicate()[0][-3000:]
            assert time.time() < deadline, "worker A did not start a trial"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(30)
        text_b = survivor.communicate(timeout=240)[0]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
                p.wait(30)
    assert survivor.returncode == 0, text_b[-3000:]
    [killed_dir] = [p.parent for p in out_a.glob("trials/*/params.json")]
    assert not (killed_dir / "objectives.json").exists()  # killed mid-trial, not after it
    killed = int(killed_dir.name)
    # a third worker starts after two missed heartbeats and fails the stale trial (unless the survivor already did)
    time.sleep(max(0.0, killed_at + 3.0 - time.time()))
    last = _worker(exp_file, postgres_url, out_b, 0, tmp_path)
    text_c = last.communicate(timeout=120)[0]
    assert last.returncode == 0, text_c[-3000:]

    trials = optuna.load_study(study_name="pg-demo", storage=postgres_url).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states == {n: ("FAIL" if n == killed else "COMPLETE") for n in range(3)}, states
    doc = json.loads((out_b / "pareto.json").read_text())
    assert (doc["n_trials"], doc["completed"], doc["failed"], doc["running"]) == (3, 2, 1, 0)
    assert doc["pareto"] and {e["number"] for e in doc["pareto"]} <= set(states) - {killed}
    assert (out_b / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    for t in trials:
        if t.number != killed:
            tdir = out_b / "trials" / str(t.number)
            assert json.loads((tdir / "objectives.json").read_text()) == pytest.approx(
                dict(zip(["error", "fairness"], t.values, strict=True)))
    # the password stays out of the workers' messages and files
    for path in [*out_a.rglob("*.json"), *out_b.rglob("*.json"), *out_b.rglob("*.txt")]:
        assert PASSWORD_IN_URL not in path.read_text() and PASSWORD not in path.read_text(), path
    assert PASSWORD_IN_URL not in text_b + text_c
    for path in [*out_a.glob("trials/*/params.json"), *out_b.glob("trials/*/params.json")]:
        assert json.loads(path.read_text())["storage"] == postgres_url.replace(PASSWORD_IN_URL, "***")

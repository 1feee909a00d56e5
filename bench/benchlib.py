"""Helpers shared by the Python benchmarks in bench/ (imported from the script's directory)."""
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """The resident set size of process `pid`, in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# For the benchmarks built on bench/loadgen (overload.py, tail.py): its binary, fusebox started
# from a policies directory, the fake upstreams and the open-loop load generator as processes.

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fusebox_binary():
    """FUSEBOX_BIN, or target/release/fusebox."""
    return os.environ.get("FUSEBOX_BIN", str(ROOT / "target/release/fusebox"))


def loadgen_binary():
    """LOADGEN_BIN, or bench/loadgen built into target/loadgen (its own workspace and lock)."""
    if os.environ.get("LOADGEN_BIN"):
        return os.environ["LOADGEN_BIN"]
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--quiet",
         "--manifest-path", str(ROOT / "bench/loadgen/Cargo.toml"),
         "--target-dir", str(ROOT / "target/loadgen")],
        check=True)
    return str(ROOT / "target/loadgen/release/fusebox-loadgen")


class PolicyRefused(Exception):
    """`fusebox check` refused the policies (e.g. keys this binary does not know yet)."""


class Processes:
    """Processes started by a benchmark, each stopped by its PID when the `with` block ends."""

    def __init__(self):
        self.procs = []

    def __enter__(self):
        return self

    def start(self, argv, log=None, **kwargs):
        out = open(log, "w") if log else subprocess.DEVNULL
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                **kwargs)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http_request(method, host, port, path, timeout=2.0):
    """(status, body) of one plain HTTP request (no proxy)."""
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(host, port, path, proc=None, timeout=10.0):
    """Until GET path answers 200 (or `proc` exits, or `timeout` passes: SystemExit)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode} "
                             f"before {host}:{port}{path} answered")
        try:
            if http_request("GET", host, port, path, timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no answer from {host}:{port}{path} within {timeout:.0f} s")


def start_fusebox(procs, binary, policies, work, workers=2):
    """fusebox on policies (checked first: PolicyRefused with its message when it refuses
    them), `--workers` as given; returns (process, egress port, admin port) once /readyz is OK."""
    listen, admin = free_port(), free_port()
    addrs = ["--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}"]
    check = subprocess.run([binary, "check", "--policies", str(policies), *addrs],
                           capture_output=True, text=True)
    if check.returncode != 0:
        text = (check.stderr.strip() or check.stdout.strip()).replace(f"{policies}/", "")
        first = [line.split("; valid keys here")[0] for line in text.splitlines()]
        raise PolicyRefused(first[0] if first else f"fusebox check exited {check.returncode}")
    proc = procs.start([binary, "run", "--policies", policies, *addrs, "--workers", str(workers)],
                       log=pathlib.Path(work) / "fusebox.log",
                       env=dict(os.environ, RUST_LOG="warn"))
    wait_http("127.0.0.1", admin, "/readyz", proc)
    return proc, listen, admin


def run_load(loadgen, args, on_second=None):
    """Runs `fusebox-loadgen load ARGS`; returns (seconds, phases, total) from its JSON lines,
    calling on_second(line) as each second's line arrives."""
    seconds, phases, total = [], [], None
    proc = subprocess.Popen([loadgen, "load", *[str(a) for a in args]], stdout=subprocess.PIPE,
                            text=True)
    try:
        for raw in proc.stdout:
            line = json.loads(raw)
            if line["type"] == "second":
                seconds.append(line)
                if on_second:
                    on_second(line)
            elif line["type"] == "phase":
                phases.append(line)
            else:
                total = line
    finally:
        if proc.wait() != 0:
            raise SystemExit(f"fusebox-loadgen load exited with {proc.returncode}")
    return seconds, phases, total

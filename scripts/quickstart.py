#!/usr/bin/env python3
"""scripts/quickstart.py - runs the README's Quickstart literally and checks what it prints.

Usage (from anywhere): python3 scripts/quickstart.py [--readme README.md] [--keep]

The commands come from the README itself, so the Quickstart cannot drift from what works:
every ```console block of the section "## Quickstart" (up to the next "## " heading) is a
transcript. A line starting with "$ " is a command (a trailing backslash continues it on the
next line); the lines after it, up to the next command or the end of the block, are what it
must print. Other blocks of the README (```sh, ```toml, ...) are not run.

Every command runs in ONE bash session, in the repository root, in README order, so `export`,
`cd` and background jobs (`cmd &`) carry over as they do for a reader typing them. Each command
must exit 0. Its output (stdout and stderr together, carriage returns dropped) must match the
expected lines:
  - line by line, exactly, except that
  - "…" inside a line matches any text, and a line that is only "…" matches any number of
    lines (zero included);
  - a command followed by no expected line may print anything.
Trailing "# comments" on a command line are shell comments and run as such.

At the end, every background job the transcript started is stopped by its PID (SIGTERM, then
SIGKILL after 10 s), and so is the session. Exit status: 0 when every command passed, 1
otherwise; the summary line is "quickstart: N passed, N failed".

Network: the Quickstart only uses loopback addresses (127.0.0.0/8), and so does this runner.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ELLIPSIS = "…"
TIMEOUT_S = 900  # the whole transcript; `cargo build --release` is the slow part


def section(text, heading):
    """The lines of the Markdown section whose "## " heading starts with `heading`."""
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip().startswith(heading))
    except StopIteration:
        sys.exit(f"quickstart: no {heading!r} heading in the README")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def transcripts(lines):
    """[(command, [expected lines])] from the ```console blocks, in order."""
    steps, in_block, pending = [], False, None
    for line in lines:
        fence = line.strip()
        if not in_block:
            in_block = fence == "```console"
            continue
        if fence == "```":
            in_block = False
            pending = None
            continue
        if pending is not None and pending[0].endswith("\\"):
            pending[0] += "\n" + line
        elif line.startswith("$ "):
            pending = [line[2:], []]
            steps.append(pending)
        elif pending is None:
            sys.exit(f"quickstart: output line before any command in a console block: {line!r}")
        else:
            pending[1].append(line)
    return [(cmd, expected) for cmd, expected in steps]


def line_matches(pattern, line):
    regex = ".*".join(re.escape(part) for part in pattern.split(ELLIPSIS))
    return re.fullmatch(regex, line) is not None


def lines_match(expected, actual):
    """Glob over lines: a bare "…" line matches any run of lines."""
    memo = {}

    def go(i, j):
        if (i, j) not in memo:
            if i == len(expected):
                memo[(i, j)] = j == len(actual)
            elif expected[i].strip() == ELLIPSIS:
                memo[(i, j)] = any(go(i + 1, k) for k in range(j, len(actual) + 1))
            else:
                memo[(i, j)] = j < len(actual) and line_matches(expected[i], actual[j]) and go(i + 1, j + 1)
        return memo[(i, j)]

    return go(0, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory with each output")
    args = ap.parse_args()
    steps = transcripts(section(Path(args.readme).read_text(encoding="utf-8"), "## Quickstart"))
    if not steps:
        sys.exit("quickstart: no ```console command in the Quickstart")

    work = Path(tempfile.mkdtemp(prefix="fusebox-quickstart."))
    script = ["set -u", f"cd {sh_quote(str(ROOT))}"]
    for n, (cmd, _) in enumerate(steps):
        out = work / f"{n}.out"
        # `{ ...; }` keeps background jobs and exports in this shell; each command's own output
        # goes to its file. The job PIDs are written after every step, for the cleanup.
        script.append(f"{{ {cmd}\n}} >{sh_quote(str(out))} 2>&1 </dev/null")
        script.append(f"echo $? >{sh_quote(str(out))}.rc")
        script.append(f"jobs -p >>{sh_quote(str(work / 'pids'))}")
    (work / "transcript.sh").write_text("\n".join(script) + "\n", encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS and not k.startswith("FUSEBOX_")}
    started = time.monotonic()
    session = subprocess.Popen(["bash", str(work / "transcript.sh")], env=env, start_new_session=False)
    try:
        session.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        session.kill()
        session.wait()
        print(f"quickstart: the transcript did not finish within {TIMEOUT_S} s")
    finally:
        stop_jobs(work / "pids")

    passed = failed = 0
    for n, (cmd, expected) in enumerate(steps):
        out_file, rc_file = work / f"{n}.out", work / f"{n}.out.rc"
        shown = cmd.splitlines()[0] + (" …" if "\n" in cmd else "")
        if not rc_file.exists():
            failed += 1
            print(f"FAIL  $ {shown}\n      did not run")
            continue
        rc = int(rc_file.read_text().strip() or "-1")
        actual = out_file.read_text(encoding="utf-8", errors="replace").replace("\r", "").splitlines()
        problems = []
        if rc != 0:
            problems.append(f"exit status {rc}")
        if expected and not lines_match(expected, actual):
            problems.append("printed something else than the README says")
        if problems:
            failed += 1
            print(f"FAIL  $ {shown}\n      " + "; ".join(problems))
            print("      README expects:")
            print("\n".join("        | " + l for l in expected) or "        (anything)")
            print("      printed:")
            print("\n".join("        | " + l for l in actual) or "        (nothing)")
        else:
            passed += 1
            print(f"ok    $ {shown}")
    print(f"(work directory {work}{', kept' if args.keep else ''}; {time.monotonic() - started:.0f} s)")
    if not args.keep:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    print(f"quickstart: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def stop_jobs(pids_file):
    """SIGTERM every background job the transcript started, by PID; SIGKILL what lingers."""
    if not pids_file.exists():
        return
    pids = sorted({int(p) for p in pids_file.read_text().split() if p.strip().isdigit()})
    for pid in pids:
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the finished session) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    main()

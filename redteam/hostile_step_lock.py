#!/usr/bin/env python3
"""Hostile edits of a lock's [[step]] installs entry, each applied with envc (the base cached).

Usage: hostile_step_lock.py GOOD_LOCK SPEC   (ENVC_STORE set; SPEC's lock is overwritten)
GOOD_LOCK is a lock of SPEC whose one packages step installs `hello`.
"""
import re, subprocess, sys

ENVC = "/work/wt-red/target/release/envc"
good, spec = sys.argv[1], sys.argv[2]
lock = spec.rsplit(".", 1)[0] + ".lock"
text = open(good).read()
step = text.index("[[step]]")
line_re = re.compile(r'  \{ name = "hello".*\n')
hello = line_re.search(text, step).group(0)
libc = re.search(r'  \{ name = "libc6".*\n', text).group(0)

def field(line, k):
    return re.search(k + r' = ("[^"]*"|\d+)', line).group(1)

def setf(line, k, v):
    return re.sub(k + r' = ("[^"]*"|\d+)', lambda m: f"{k} = {v}", line, count=1)

cases = {
    "name with newline": setf(hello, "name", r'"hello\nPackage: evil"'),
    "name with comma": setf(hello, "name", '"hello,evil"'),
    "name leading dash": setf(hello, "name", '"-oAPT::x=1"'),
    "version quote": setf(hello, "version", "\"2.10-3'; touch /tmp/x; '\""),
    "arch newline": setf(hello, "arch", r'"amd64\nFilename: ../../x"'),
    "path dotdot (file stored)": setf(hello, "path", '"../../../../etc/passwd"'),
    "mirror file:/etc (file stored)": setf(hello, "mirror", '"file:/etc"'),
    "sha256/size of libc6": setf(setf(hello, "sha256", field(libc, "sha256")), "size", field(libc, "size")),
    "duplicate entry": hello + hello,
    "same nav two files": hello + setf(hello, "sha256", field(libc, "sha256")),
    "extra unneeded package": hello + libc.replace('name = "libc6"', 'name = "libc6"'),
    "empty installs": "",
    "huge size": setf(hello, "size", "18446744073709551615"),
}
for name, repl in cases.items():
    t = text[:step] + line_re.sub(lambda m: repl, text[step:], count=1)
    open(lock, "w").write(t)
    r = subprocess.run([ENVC, "--color", "never", "apply", spec], capture_output=True, text=True, timeout=900)
    err = [l for l in r.stderr.splitlines() if not l.startswith("[")]
    msg = " ".join(" ".join(err).split())
    m = re.search(r"(failed: .{0,260}|error: .{0,260}|root created|panicked.{0,200})", msg)
    print(f"--- {name}: rc={r.returncode} {m.group(1) if m else msg[:300]}")
open(lock, "w").write(text)

#!/usr/bin/env python3
"""Writes DIR/demo-1.0-py3-none-any.whl, the smallest wheel pip accepts (one module, its
METADATA, WHEEL and RECORD), for the fake package index of tests/trust.rs. Prints the wheel's
file name and sha256 on one line."""
import base64
import hashlib
import os
import sys
import zipfile

files = {
    "demo/__init__.py": b"VERSION = '1.0'\n",
    "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
    "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: make_wheel.py\n"
    b"Root-Is-Purelib: true\nTag: py3-none-any\n",
}


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


record = "".join(record_line(n, d) for n, d in files.items()) + "demo-1.0.dist-info/RECORD,,\n"
files["demo-1.0.dist-info/RECORD"] = record.encode()

name = "demo-1.0-py3-none-any.whl"
path = os.path.join(sys.argv[1], name)
with zipfile.ZipFile(path, "w") as wheel:
    for member, data in files.items():
        # A fixed date: the same bytes every run.
        wheel.writestr(zipfile.ZipInfo(member, (2024, 1, 1, 0, 0, 0)), data)
with open(path, "rb") as f:
    print(name, hashlib.sha256(f.read()).hexdigest())

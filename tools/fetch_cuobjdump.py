#!/usr/bin/env python3
"""tools/fetch_cuobjdump.py DIR: fetch cuobjdump and nvdisasm (NVIDIA's PyPI wheels
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm, Linux x86-64) into DIR with the standard library
only (no pip), for `make cuda-sass-check` where the CUDA toolkit came without them. Prints the
folder that holds both; exit status 1 (and why, on stderr) when they cannot be had."""
import json
import os
import stat
import sys
import urllib.parse
import urllib.request
import zipfile


def wheel_url(package):
    index = f"https://pypi.org/pypi/{package}/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        info = json.load(r)
    for f in info["urls"]:
        if f["filename"].endswith(".whl") and "x86_64" in f["filename"]:
            return urllib.parse.urljoin(index, f["url"]), f["filename"]  # (mirrors give relative URLs)
    raise RuntimeError(f"{package}: no Linux x86-64 wheel in its latest release")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    bindir = None
    for package in ("nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"):
        url, name = wheel_url(package)
        path = os.path.join(out, name)
        urllib.request.urlretrieve(url, path)
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                base = os.path.basename(member)
                if base in ("cuobjdump", "nvdisasm"):
                    z.extract(member, out)
                    target = os.path.join(out, member)
                    os.chmod(target, os.stat(target).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
                    bindir = bindir or os.path.dirname(target)
        os.remove(path)
    if not bindir or not all(os.path.exists(os.path.join(bindir, t)) for t in ("cuobjdump", "nvdisasm")):
        print("fetch_cuobjdump: the wheels did not hold cuobjdump and nvdisasm side by side", file=sys.stderr)
        return 1
    print(bindir)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # no network, PyPI changed: the caller skips the check and says so
        print(f"fetch_cuobjdump: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

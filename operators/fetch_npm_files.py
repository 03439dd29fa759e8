"""Fetch an npm package's tarball, check it against its registry integrity, and extract files.

    python3 fetch_npm_files.py URL sha512-BASE64 OUTDIR package/path/a:name-a package/path/b:name-b ...

Used by operators/Dockerfile (the posegraph image) for three.js (the UI's 3D view), so the image needs no Node.js and
no node base image; the integrity pin is the registry's own `dist.integrity`. Standard library only.
"""

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

url, integrity, out, *members = sys.argv[1:]
algorithm, _, expected = integrity.partition("-")
with urllib.request.urlopen(url, timeout=120) as response:
    data = response.read()
actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
if actual != expected:
    sys.exit(f"fetch_npm_files: {url} does not match its pinned {algorithm} integrity")
Path(out).mkdir(parents=True, exist_ok=True)
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
    for member in members:
        source, _, name = member.partition(":")
        target = Path(out) / name  # a name may keep the package's folders (loaders/GLTFLoader.js)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tar.extractfile(source).read())
print(f"fetch_npm_files: {len(members)} files of {url.rsplit('/', 1)[-1]} into {out}")

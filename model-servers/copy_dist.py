"""Copy the installed files of one distribution into OUT, at their absolute paths (OUT/opt/venv/...).

    python copy_dist.py DIST OUT

The last stage of each image copies OUT over its root: posegraph's own files (its package, its
metadata and its `posegraph` command) make one small layer, apart from the dependencies' layer.
"""

import shutil
import sys
from importlib import metadata
from pathlib import Path

name, out = sys.argv[1], Path(sys.argv[2])
dist = metadata.distribution(name)
copied = 0
for file in dist.files or []:
    source = Path(dist.locate_file(file)).resolve()
    if not source.is_file() or "__pycache__" in source.parts:
        continue
    target = out / source.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    copied += 1
print(f"copy_dist: {copied} files of {name} {dist.version} under {out}")

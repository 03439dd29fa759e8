"""FBX export by way of Blender: posegraph writes glTF (posegraph.motion.gltf), and Blender, run
headless, converts it, since FBX is a closed format that only Autodesk's SDK and Blender's exporter
write well.

* :func:`find_blender`: ``$POSEGRAPH_BLENDER`` (a path, or a command name) if set, else ``blender``
  on ``PATH``; :class:`BlenderMissing`, one line saying what to install, if neither is there.
* :func:`glb_to_fbx`: runs ``blender -b --factory-startup`` with ``blender_glb_to_fbx.py`` (next
  to this module, shipped in the package; it says which import and export options it uses and why)
  on a GLB, writing the FBX to a temporary name beside the target that is renamed into place once
  Blender has exited cleanly, so a failure never leaves half a file nor replaces an old one.
  Blender's output is kept quiet; a failure is a :class:`~posegraph.errors.UsageError` quoting the
  line of it that says what went wrong.

Debian's ``blender`` package (3.4) does not depend on python3-numpy, which Blender's glTF importer
imports: scripts/install-blender.sh installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import UsageError

ENV = "POSEGRAPH_BLENDER"
SCRIPT = Path(__file__).with_name("blender_glb_to_fbx.py")
SCRIPT_PREFIX = "posegraph-glb-to-fbx:"  # the script's own error lines (blender_glb_to_fbx.PREFIX)
INSTALL = (f"FBX export needs Blender 3.x or newer: apt-get install blender python3-numpy (Debian/Ubuntu) "
           f"or download it from blender.org, or set {ENV} to its path")
_GLB_MAGIC = b"glTF"

# Lines of Blender's output that never say what went wrong.
_NOISE = re.compile(r"^(Blender quit|Blender \d[\d.]*|Location: |Error: Not freed memory|read blend: |Read prefs: |"
                    r"Color management: |Traceback \(most recent call last\)|\s+File \"|\s+[~^ ]+$|\s*$)")
_PYTHON_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b: ")


class BlenderMissing(UsageError):
    """No Blender to run: the message (one line) says what to install."""


def find_blender() -> str:
    """The Blender executable to run: ``$POSEGRAPH_BLENDER`` if set, else ``blender`` on ``PATH``."""
    configured = os.environ.get(ENV, "").strip()
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise BlenderMissing(f"{ENV}={configured} is not an executable file. {INSTALL}")
        return found
    found = shutil.which("blender")
    if found is None:
        raise BlenderMissing(f"no blender on PATH. {INSTALL}")
    return found


def _reason(output: str) -> str:
    """The line of Blender's output that says what went wrong: the conversion script's own message,
    else the last Python exception, else the last line that is not start-up or shut-down chatter."""
    lines = output.splitlines()
    ours = [line[len(SCRIPT_PREFIX):].strip() for line in lines if line.startswith(SCRIPT_PREFIX)]
    if ours:
        return ours[-1]
    errors = [line.strip() for line in lines if _PYTHON_ERROR.match(line)]
    meaningful = errors or [line.strip() for line in lines if not _NOISE.match(line)]
    reason = meaningful[-1] if meaningful else "no output"
    if "No module named 'numpy'" in reason:
        reason += " (Blender's glTF importer needs numpy: apt-get install python3-numpy)"
    return reason


def glb_to_fbx(glb_path: str | os.PathLike, fbx_path: str | os.PathLike, *, timeout: float = 300) -> Path:
    """Convert a GLB written by posegraph.motion.gltf into an FBX at ``fbx_path`` with Blender, run
    headless (see blender_glb_to_fbx.py for the options). Returns the FBX's path. BlenderMissing
    without Blender; UsageError for a file that is not a GLB, or when Blender fails, times out or
    writes nothing, and then no FBX is left at ``fbx_path`` (an old one there stays as it was)."""
    glb, fbx = Path(glb_path), Path(fbx_path)
    try:
        with open(glb, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UsageError(f"cannot read {glb}: {e.strerror or e}") from None
    if magic != _GLB_MAGIC:
        raise UsageError(f"{glb} is not a GLB file (it does not start with glTF's binary header)")
    if not fbx.parent.is_dir():
        raise UsageError(f"cannot write {fbx}: {fbx.parent} is not a directory")
    blender = find_blender()
    # Beside the target, so that the rename is atomic; ".fbx" last, as the exporter expects.
    fd, temporary = tempfile.mkstemp(dir=fbx.parent, prefix=f".{fbx.stem}.", suffix=".tmp.fbx")
    os.close(fd)
    tmp = Path(temporary)
    command = [blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
               "--python", str(SCRIPT), "--", str(glb.resolve()), str(tmp.resolve())]
    try:
        try:
            run = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UsageError(f"Blender did not convert {glb} to FBX within {timeout:g} s") from None
        except OSError as e:  # found a moment ago, but cannot be run
            raise BlenderMissing(f"cannot run {blender}: {e.strerror or e}. {INSTALL}") from None
        output = f"{run.stdout}\n{run.stderr}"
        if run.returncode != 0:
            raise UsageError(f"Blender could not convert {glb} to FBX (exit {run.returncode}): {_reason(output)}")
        if tmp.stat().st_size == 0:
            raise UsageError(f"Blender wrote no FBX for {glb}: {_reason(output)}")
        os.replace(tmp, fbx)
    finally:
        tmp.unlink(missing_ok=True)
    return fbx

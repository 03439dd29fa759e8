"""Make TorchServe's one torch import optional (run once at image build, after pip install).

TorchServe 0.12's Python worker imports torch in ts/protocol/otf_message_handler.py for a single
purpose: to serialise a handler's reply with torch.save when it is a torch.Tensor. posegraph's
handler replies with JSON bytes, so the stage image carries no torch (PyPI's Linux wheel is the
CUDA build, ~4 GB with its nvidia-* wheels; the CPU build from PyTorch's own index ~700 MB). With
torch installed the patched code behaves exactly as upstream's. The edit is checked against the
pinned release: any other file content fails the build instead of being half-patched.
"""

import compileall
import sys
from importlib.metadata import version
from pathlib import Path

import ts.protocol

PINNED = "0.12.0"
EDITS = [
    ("\nimport torch\n",
     "\ntry:  # posegraph: optional, see model-servers/torchserve-no-torch.py\n    import torch\n"
     "except ImportError:\n    torch = None\n"),
    ("elif isinstance(val, torch.Tensor):", "elif torch is not None and isinstance(val, torch.Tensor):"),
]

if version("torchserve") != PINNED:
    sys.exit(f"torchserve-no-torch: written for torchserve {PINNED}, found {version('torchserve')}: check the edit")
path = Path(ts.protocol.__file__).parent / "otf_message_handler.py"
text = path.read_text()
for old, new in EDITS:
    if text.count(old) != 1:
        sys.exit(f"torchserve-no-torch: {path} does not contain {old.strip()!r} exactly once")
    text = text.replace(old, new)
path.write_text(text)
compileall.compile_file(str(path), quiet=1)  # the root filesystem is read-only at run time
print(f"torchserve-no-torch: {path} imports torch only if it is installed")

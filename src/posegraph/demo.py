"""``posegraph demo``: the README's main job. Makes its own inputs from a photo that ships in a
package, gets checkpoints (official if reachable, else random with a loud notice), and runs them."""

from __future__ import annotations

import time
from pathlib import Path

from .checkpoints import checkpoint_path, default_checkpoint_dir, fetch_official, write_random
from .config import load_profile
from .errors import FetchError
from .pipeline import Pipeline, run_input
from .samples import synthetic_clip_frames, write_astronaut, write_clip
from .zoo import get_model


def ensure_checkpoints(profile, directory: Path) -> None:
    for stage in ("detect", "pose2d", "lift3d"):
        settings = profile.stage_settings(stage)
        if settings.checkpoint:
            continue
        spec = get_model(settings.model)
        path = checkpoint_path(directory, spec.name)
        if path.is_file():
            continue
        try:
            print(f"downloading {spec.name} ({spec.download_url()})")
            fetch_official(spec, directory)
        except FetchError as exc:
            print(f"cannot download {spec.name} ({str(exc).split(' — ')[0]}); writing RANDOM weights instead")
            write_random(spec, path)


def run_demo(args) -> int:
    started = time.perf_counter()
    profile = load_profile(args.profile, args.overrides)
    directory = Path(args.checkpoints) if args.checkpoints else default_checkpoint_dir()
    ensure_checkpoints(profile, directory)
    out = Path(args.out)
    photo = write_astronaut(out / "inputs" / "astronaut.jpg")
    clip = write_clip(out / "inputs" / "clip.mp4", synthetic_clip_frames(args.frames))
    pipeline = Pipeline(profile, checkpoint_dir=directory).load()
    from .cli import _report

    print(f"\n[1/2] photo {photo}")
    _report(run_input(pipeline, str(photo), out / "photo"))
    print(f"\n[2/2] clip {clip}")
    _report(run_input(pipeline, str(clip), out / "clip"))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; open {out / 'photo' / 'pose3d.png'} "
          f"and {out / 'clip' / 'overlay.mp4'}")
    return 0

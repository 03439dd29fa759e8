"""Root motion, the floor, foot contacts and foot locking, against a synthetic walk's ground truth.

    python bench/motion.py [--seconds 7] [--fps 30] [--seed 0] [--sweep] [--json out.json]

The walk (posegraph.motion.synthetic): a person walking 7 m along a 6 m-radius arc across a
1280×720 view, 4-6 m from a camera 1.6 m up, tilted down 12°, focal length 1000 px; feet planted
60 % of each 1 s gait cycle. From it, the 2D keypoints (projected) and the root-relative 3D, with
Gaussian noise; both go through what lift3d does to a track (its default smoothing of the 3D, then
posegraph.motion.root.place_roots), then posegraph.motion.world and the export's solve. Against
the truth it reports, per noise level and focal length:
  root     mean distance of the fitted pelvis from the true one, camera space, mm
  depth    the same along the view axis only (where a pinhole fit is weakest), mm
  tilt     angle between the fitted floor's normal and the true one, degrees
  contact  agreement of the detected contacts with the true ones (F1, both feet)
  skate    mean distance an ankle moves across the floor per frame while truly planted, mm/frame,
           in the exported skeleton without and with foot locking (the truth: 0)
--sweep: contact F1 over a grid of the two contact thresholds (height, speed), which chose the
defaults in posegraph.motion.ground.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from posegraph.frame import Camera, TrackDocument, TrackFrame
from posegraph.motion import ground as floor
from posegraph.motion import synthetic, world
from posegraph.motion.root import default_focal_px, place_roots
from posegraph.motion.smoothing import SmoothingSettings, smooth

NOISE = [("none", 0.0, 0.0), ("2 px, 15 mm", 2.0, 0.015), ("4 px, 30 mm", 4.0, 0.030)]


def lifted_track(walk: synthetic.Walk, focal_px: float) -> TrackDocument:
    """The walk as lift3d leaves a track: 3D smoothed, roots placed."""
    k3 = smooth(walk.keypoints3d, SmoothingSettings())
    k3 = k3 - k3[:, :1]
    frames = []
    for i, (k2, p3) in enumerate(zip(walk.keypoints2d, k3)):
        box = [*k2[:, :2].min(0), *k2[:, :2].max(0)]
        frames.append(TrackFrame(frame_index=i, bbox=box, score=1.0, keypoints2d=k2.tolist(), keypoints3d=p3.tolist()))
    doc = TrackDocument(track_id=1, width=walk.width, height=walk.height, frames=frames,
                        camera=Camera(focal_px=focal_px))
    place_roots([doc], SmoothingSettings())
    return doc


def f1(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found & truth).sum()
    return float(2 * hits / max(found.sum() + truth.sum(), 1))


def measure(walk: synthetic.Walk, focal_px: float) -> dict:
    doc = lifted_track(walk, focal_px)
    root = np.asarray([f.root3d for f in doc.frames])
    motion = world.track_motion([f.keypoints3d for f in doc.frames], root, walk.fps)
    up = motion.ground.up
    row = {"root_mm": float(np.linalg.norm(root - walk.root, axis=1).mean() * 1000),
           "depth_mm": float(np.abs(root[:, 2] - walk.root[:, 2]).mean() * 1000),
           "tilt_deg": float(np.degrees(np.arccos(np.clip(up @ walk.up, -1, 1)))),
           "floor": motion.ground.fitted,
           "contact_f1": f1(motion.contacts, walk.contacts)}
    for lock in (False, True):
        solved = world.solve(motion, lock_feet=lock)
        row["skate_locked_mm" if lock else "skate_mm"] = floor.foot_skate(
            solved.positions, walk.contacts, np.array([0.0, 1.0, 0.0])) * 1000
    return row


def sweep(walk: synthetic.Walk) -> list[dict]:
    doc = lifted_track(walk, walk.focal_px)
    root = np.asarray([f.root3d for f in doc.frames])
    motion = world.track_motion([f.keypoints3d for f in doc.frames], root, walk.fps)
    camera = np.asarray([f.keypoints3d for f in doc.frames]) + root[:, None]
    ankles = camera[:, [floor.ANKLES["left"], floor.ANKLES["right"]]]
    rows = []
    for height in (0.02, 0.03, 0.05, 0.08):
        for speed in (0.3, 0.5, 0.8, 1.2, 1.6, 2.4):
            found = floor.detect_contacts(ankles, motion.ground, walk.fps, max_height=height, max_speed=speed)
            rows.append({"height_m": height, "speed_mps": speed, "contact_f1": f1(found, walk.contacts)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=7.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print("| noise (2D, 3D) | focal | root (mm) | depth (mm) | floor tilt (°) | contacts F1 | skate (mm/frame) "
          "| skate, locked |")
    print("|---|---|---|---|---|---|---|---|")
    for name, px, metres in NOISE:
        walk = synthetic.walk(args.seconds, args.fps, noise_px=px, noise_m=metres, seed=args.seed)
        for focal_name, focal in (("true 1000 px", walk.focal_px),
                                  (f"default {default_focal_px(walk.width, walk.height):.0f} px",
                                   default_focal_px(walk.width, walk.height))):
            row = {"noise": name, "focal": focal_name, **measure(walk, focal)}
            rows.append(row)
            print(f"| {name} | {focal_name} | {row['root_mm']:.0f} | {row['depth_mm']:.0f} | {row['tilt_deg']:.2f} "
                  f"| {row['contact_f1']:.2f} | {row['skate_mm']:.1f} | {row['skate_locked_mm']:.2f} |")
    result = {"rows": rows}
    if args.sweep:
        walk = synthetic.walk(args.seconds, args.fps, noise_px=2.0, noise_m=0.015, seed=args.seed)
        result["sweep"] = sweep(walk)
        print("\ncontact F1, noise 2 px / 15 mm: height (m) down, speed (m/s) across")
        speeds = sorted({r["speed_mps"] for r in result["sweep"]})
        print("| height \\ speed | " + " | ".join(f"{s}" for s in speeds) + " |")
        print("|---" * (len(speeds) + 1) + "|")
        for h in sorted({r["height_m"] for r in result["sweep"]}):
            cells = [f"{r['contact_f1']:.2f}" for r in result["sweep"] if r["height_m"] == h]
            print(f"| {h} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

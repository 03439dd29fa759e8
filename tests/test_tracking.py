"""Tracking persons across frames, and grouping them into track documents."""

from __future__ import annotations

import numpy as np

from posegraph.frame import FrameDocument, Person
from posegraph.tracking import Tracker, apply_tracks, iou_matrix, tracks_from_frames


def person(x, y, w=60, h=160, keypoints=None):
    return Person(bbox=[x, y, x + w, y + h], score=0.9, keypoints2d=keypoints)


def frames_of(positions_per_frame, **kw):
    return [FrameDocument(width=640, height=480, frame_index=i,
                          persons=[person(x, y, **kw) for x, y in positions])
            for i, positions in enumerate(positions_per_frame)]


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_two_walkers_keep_their_ids():
    docs = frames_of([[(50 + 5 * t, 100), (400 - 5 * t, 120)] for t in range(12)])
    tracker = Tracker()
    for doc in docs:
        tracker.update(doc)
    assert [[p.track_id for p in d.persons] for d in docs] == [[0, 1]] * 12


def test_a_short_miss_keeps_the_track_a_long_one_ends_it():
    positions = [[(100 + 3 * t, 100)] for t in range(10)]
    positions[3] = positions[4] = []  # missed twice: within max_gap=2
    positions[6] = positions[7] = positions[8] = []  # missed three times: a new track
    docs = frames_of(positions)
    tracker = Tracker(max_gap=2)
    for doc in docs:
        tracker.update(doc)
    ids = [d.persons[0].track_id if d.persons else None for d in docs]
    assert ids == [0, 0, 0, None, None, 0, None, None, None, 1]


def test_someone_new_gets_a_new_id():
    docs = frames_of([[(100, 100)], [(102, 100)], [(102, 100), (400, 100)]])
    tracker = Tracker()
    for doc in docs:
        tracker.update(doc)
    assert [p.track_id for p in docs[2].persons] == [0, 1]


def test_oks_follows_keypoints():
    rng = np.random.default_rng(0)
    pose = rng.uniform(0, 60, (17, 2))
    docs = []
    for t in range(5):
        # The boxes jump around (a jittery detector); the keypoints move smoothly.
        kp = np.c_[pose + [100 + 2 * t, 100], np.ones(17)].tolist()
        jitter = 40 if t % 2 else 0
        docs.append(FrameDocument(width=640, height=480, frame_index=t,
                                  persons=[person(100 + jitter, 100, w=60, h=60, keypoints=kp)]))
    by_iou, by_oks = Tracker(threshold=0.5), Tracker(threshold=0.5, use_oks=True)
    for doc in docs:
        by_oks.update(doc)
    assert {d.persons[0].track_id for d in docs} == {0}
    for doc in docs:
        by_iou.update(doc)
    assert len({d.persons[0].track_id for d in docs}) > 1  # boxes alone lose the person


def test_tracks_round_trip_through_track_documents():
    docs = frames_of([[(50 + 5 * t, 100), (400, 120)] for t in range(4)],
                     keypoints=[[1.0, 2.0, 0.9]] * 17)
    tracker = Tracker()
    for doc in docs:
        tracker.update(doc)
    tracks = tracks_from_frames(docs)
    assert [(t.track_id, [f.frame_index for f in t.frames]) for t in tracks] == [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 3])]
    for track in tracks:
        for i, frame in enumerate(track.frames):
            frame.keypoints3d = [[track.track_id, i, 0.0]] * 17
    apply_tracks(docs, tracks)
    assert docs[2].persons[1].keypoints3d[0] == [1.0, 2.0, 0.0]

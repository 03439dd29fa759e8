"""posegraph: person detection → 2D keypoints → 3D lifting, one stage per server, one document between them."""

__version__ = "0.1.0"

"""The web UI (``posegraph ui``): upload a photo or a video, watch jobs, see skeletons in 2D and 3D."""

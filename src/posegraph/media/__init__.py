"""Media in and out: pixels in documents, video files, overlays and charts, the bundled inputs."""

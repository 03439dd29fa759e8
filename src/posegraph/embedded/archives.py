"""Stage archives for the embedded graph: built once from a profile's checkpoints and cached, or
copied from where a PosePipeline's ``storageUri`` points (a directory or an s3:// prefix)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from .. import __version__
from ..config import Profile
from ..errors import PosegraphError, UsageError
from ..graph.spec import PosePipeline
from ..models.checkpoints import resolve_checkpoint
from ..models.engine import export_fingerprint
from ..names import STAGES
from ..serving.archive import ArchiveOptions, build_archive, find_mar
from ..stages.user import builtin_chain, check_chain
from ..uri import _describe, cache_dir, file_sha256, local_path, s3_client, split_s3


def _code_digest(function) -> str:
    """The content of the module that writes the layout (its config.properties, the stage config)."""
    return hashlib.sha256(Path(function.__code__.co_filename).read_bytes()).hexdigest()[:12]


def _build_cached_archive(stage: str, checkpoint: str, settings) -> Path:
    from dataclasses import asdict

    path = local_path(checkpoint)
    ident = file_sha256(path) if path is not None and path.is_file() else checkpoint
    key = hashlib.sha256(json.dumps([ident, settings.model_dump(exclude={"checkpoint"}), __version__,
                                     export_fingerprint(), asdict(ArchiveOptions()),
                                     _code_digest(build_archive)], sort_keys=True).encode()).hexdigest()[:16]
    layout = cache_dir("archives") / f"{stage}-{key}"
    if not (layout / "model-store" / f"{stage}.mar").is_file():
        tmp = Path(tempfile.mkdtemp(dir=layout.parent, prefix=f".{stage}-"))
        build_archive(stage, checkpoint, tmp, settings=settings)
        if layout.exists():
            shutil.rmtree(layout)
        os.replace(tmp, layout)
    return layout


def archives_for_profile(profile: Profile, checkpoint_dir: Path | None) -> dict[str, Path]:
    """Archive layouts for the embedded default, built once from the profile's checkpoints."""

    layouts = {}
    for stage in STAGES:
        settings = profile.stage_settings(stage)
        checkpoint = resolve_checkpoint(settings.model, settings.checkpoint, checkpoint_dir)
        layouts[stage] = _build_cached_archive(stage, checkpoint, settings)
    return layouts


def _download_prefix(uri: str) -> Path:
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/"
    dest = cache_dir("archives") / ("s3-" + hashlib.sha256(uri.encode()).hexdigest()[:16])
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except Exception as exc:

        raise PosegraphError(f"cannot list {uri}: {_describe(exc)}") from None
    if not keys:
        raise UsageError(f"{uri} is empty: push an archive there first (posegraph models push)")
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return dest


def check_user_stages(pipeline: PosePipeline, layouts: dict[str, Path]) -> None:
    """A pipeline's extra stages, as their archives describe them (documents, reads, writes), put
    after the built-in ones: a read no earlier stage writes is refused in one line, before any
    server starts (posegraph.stages.user.check_chain)."""
    chain = builtin_chain(STAGES)
    for extra in pipeline.spec.extraStages:
        with zipfile.ZipFile(find_mar(layouts[extra.name], extra.name)) as z:
            manifest = yaml.safe_load(z.read("stage.yaml"))
        user = manifest.get("user")
        if manifest.get("kind") != "user" or not isinstance(user, dict):
            raise UsageError(f"extraStages {extra.name}: {extra.storageUri} holds a built-in stage's archive, "
                             "not a user's (posegraph models archive --stage-dir)")
        chain.append((extra.name, user["documents"], tuple(user["reads"]), tuple(user["writes"])))
    check_chain(chain)


def archives_for_pipeline(pipeline: PosePipeline) -> dict[str, Path]:
    """Where each stage's archive layout is on this machine: local paths as they are, s3:// copied."""
    layouts = {}
    for stage in pipeline.stage_names():
        uri = pipeline.deployment(stage).storageUri
        if uri.startswith("s3://"):
            layouts[stage] = _download_prefix(uri)
        else:
            path = local_path(uri)
            if path is None or not path.is_dir():
                raise UsageError(f"stages.{stage}.storageUri {uri}: locally, a directory or s3:// prefix")
            layouts[stage] = path
    return layouts

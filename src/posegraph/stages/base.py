"""What every stage shares: loading weights, the run loop, and recording itself in documents.

A stage is ``preprocess → infer → postprocess`` over a batch of documents and knows
nothing about HTTP or serving; runtimes (TorchServe handler, KServe model,
in-process pipeline) are thin adapters that call :meth:`Stage.run`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import PosegraphError
from ..frame import FrameDocument, StageRecord
from ..media.imageio import single_threaded_opencv
from ..models.checkpoints import warn_random_weights
from ..models.engine import Network, load_network
from ..models.zoo import ModelSpec, get_model


class StageSettings(BaseModel):
    # A typo in a profile should fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid")

    model: str
    checkpoint: str | None = None
    batch_size: int = 16


class Stage:
    name: ClassVar[str]
    Settings: ClassVar[type[StageSettings]]
    # A batch of many small independent items (frames, crops) that may be cut into parts run side
    # by side (load(split_batch=True)); lift3d's few long tracks are not.
    splits_batch: ClassVar[bool] = False

    def __init__(self, settings: StageSettings | dict[str, Any] | None = None) -> None:
        if not isinstance(settings, StageSettings):
            settings = self.Settings.model_validate(settings or {})
        self.settings = settings
        self.spec: ModelSpec = get_model(settings.model)
        if self.spec.stage != self.name:
            raise PosegraphError(f"{settings.model} is a {self.spec.stage} model, not a {self.name} model")
        self.network: Network | None = None

    # -- loading ---------------------------------------------------------------------------------
    def load(self, checkpoint_uri: str | None = None, device: str = "cpu", *, backend: str = "auto",
             threads: int | None = None, split_batch: bool = False) -> "Stage":
        """``split_batch``: run parts of each batch side by side, one thread each, instead of each
        operator over several threads; what a stage server sharing its cores does (serving.runtime).
        Only stages whose ``splits_batch`` is set do. OpenCV is set to one thread in this process
        (:func:`single_threaded_opencv`): a crop must not depend on how busy the process is."""
        single_threaded_opencv()
        uri = checkpoint_uri or self.settings.checkpoint
        if not uri:
            raise PosegraphError(f"{self.name}: no checkpoint given for {self.spec.name}")
        self.network = load_network(self.spec, uri, device=device, backend=backend, threads=threads,
                                    split_batch=split_batch and self.splits_batch)
        self._load_extra(uri, device=device, backend=backend, threads=threads)
        if self.network.random_init:
            warn_random_weights(self.spec.name, uri)
        return self

    def _load_extra(self, uri: str, **kwargs) -> None:
        """Hook for stages that run a second layout of the same weights."""

    @property
    def random_weights(self) -> bool:
        return bool(self.network and self.network.random_init)

    def _run_network(self, *inputs: np.ndarray, network: Network | None = None) -> list[np.ndarray]:
        """Call the network in chunks of ``batch_size`` along the first axis and concatenate."""
        network = network or self.network
        if network is None:
            raise PosegraphError(f"{self.name}: call load() before running the stage")
        n = inputs[0].shape[0]
        step = max(1, self.settings.batch_size)
        chunks = [network(*(x[i : i + step] for x in inputs)) for i in range(0, n, step)]
        return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]

    # -- the three steps ---------------------------------------------------------------------------
    def preprocess(self, docs: Sequence[Any]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def infer(self, batch: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def postprocess(self, docs: Sequence[Any], batch: Any, outputs: Any) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    def accepts(self, doc: Any) -> bool:
        """Documents this stage works on; others pass through untouched (a track document goes
        through detect and pose2d to lift3d, so one graph endpoint serves frames and tracks)."""
        return isinstance(doc, FrameDocument)

    def run(self, docs: Sequence[Any]) -> list[Any]:
        docs = list(docs)
        mine = [d for d in docs if self.accepts(d)]
        if not mine:
            return docs
        started = time.perf_counter()
        batch = self.preprocess(mine)
        outputs = self.infer(batch)
        self.postprocess(mine, batch, outputs)
        ms = (time.perf_counter() - started) * 1000
        for doc in mine:
            doc.stages[self.name] = StageRecord(model=self.spec.name, random_weights=self.random_weights,
                                                ms=round(ms, 2))
        return docs

    __call__ = run

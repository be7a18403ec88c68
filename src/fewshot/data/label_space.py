"""The joint label space of several datasets: class lists concatenated with per-dataset offsets.

Known-source restriction, unknown-source routing and the mapping back to per-dataset labels
live here, tested once and used by training, evaluation and prediction alike.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class LabelSpace:
    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def from_infos(cls, infos) -> "LabelSpace":
        return cls(tuple(i.name for i in infos), tuple(tuple(i.classes) for i in infos))

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        # class names as the layout reads them now (NFC), also from checkpoints written before it did
        return cls(tuple(d["names"]), tuple(tuple(unicodedata.normalize("NFC", n) for n in c) for c in d["classes"]))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "classes": [list(c) for c in self.classes]}

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.classes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.sizes:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def num_classes(self) -> int:
        return sum(self.sizes)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def global_label(self, dataset_id: int, local: int) -> int:
        if not 0 <= local < self.sizes[dataset_id]:
            raise ValueError(f"class {local} out of range for dataset {self.names[dataset_id]}")
        return self.offsets[dataset_id] + local

    def owner(self) -> Tensor:
        """dataset id of every global class, [num_classes]."""
        return torch.repeat_interleave(torch.arange(len(self.names)), torch.tensor(self.sizes))

    def to_local(self, global_labels: Tensor) -> tuple[Tensor, Tensor]:
        """global class -> (dataset id, class index within that dataset)."""
        owner = self.owner().to(global_labels.device)
        offsets = torch.tensor(self.offsets, device=global_labels.device)
        ds = owner[global_labels]
        return ds, global_labels - offsets[ds]

    def mask(self, dataset_ids: Tensor) -> Tensor:
        """[B, num_classes] True where the class belongs to the sample's dataset."""
        owner = self.owner().to(dataset_ids.device)
        return owner.unsqueeze(0) == dataset_ids.unsqueeze(1)

    def restrict(self, logits: Tensor, dataset_ids: Tensor) -> Tensor:
        """Known source: classes of other datasets get -inf, so argmax/top-k stay inside the dataset."""
        return logits.masked_fill(~self.mask(dataset_ids), float("-inf"))

    def predict(self, logits: Tensor, mode: str, dataset_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(predicted dataset id, predicted local class) under `known` or `unknown` source.

        Unknown source takes the argmax over all classes; the dataset is the one owning that class,
        so the local label is always inside the predicted dataset's range.
        """
        if mode == "known":
            if dataset_ids is None:
                raise ValueError("known-source prediction needs the dataset ids")
            logits = self.restrict(logits, dataset_ids)
        elif mode != "unknown":
            raise ValueError(f"mode must be 'known' or 'unknown', not {mode!r}")
        return self.to_local(logits.argmax(dim=1))

"""Task schemes: how class names become targets, and how outputs become P(infected).

- binary:     one logit, target 1 = infected (any class other than Normal).
- multiclass: one logit per class (softmax); P(infected) = 1 - P(normal).
- multilabel: one logit per infected class (sigmoid); Normal is all-zero. As in the original work,
              covid also counts as pneumonia when both classes exist. P(infected) = max over labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ChestXrayError

TASKS = ("binary", "multiclass", "multilabel")
IMPLIES = {"covid": "pneumonia"}  # multilabel: a covid image is also a pneumonia image


def canonical_label(label: str) -> str:
    """The one spelling of a class name: class names are matched case-insensitively everywhere."""
    return label.strip().lower()


@dataclass(frozen=True)
class TaskScheme:
    task: str
    classes: tuple[str, ...]  # every class name seen in the data, canonical (lower case), sorted
    normal_class: str  # the class name that means Normal, canonical

    @classmethod
    def build(cls, task: str, class_names, normal_class: str = "normal") -> "TaskScheme":
        if task not in TASKS:
            raise ChestXrayError(f"unknown task '{task}': choose one of {TASKS}")
        names = tuple(sorted({canonical_label(c) for c in class_names}))
        normal = canonical_label(normal_class)
        if normal not in names:
            raise ChestXrayError(f"no class named '{normal_class}' (any case) among {list(names)}; set --normal-class")
        if len(names) < 2:
            raise ChestXrayError(f"need a Normal class and at least one infected class, found {list(names)}")
        return cls(task, names, normal)

    @property
    def infected_classes(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c != self.normal_class)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the model outputs, in order."""
        if self.task == "binary":
            return ("infected",)
        if self.task == "multiclass":
            return self.classes
        return self.infected_classes

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def is_infected(self, label: str) -> int:
        return int(self._check(label) != self.normal_class)

    def target(self, label: str) -> torch.Tensor:
        """Training target for one label: float for binary/multilabel, long index for multiclass."""
        label = self._check(label)
        if self.task == "binary":
            return torch.tensor(float(label != self.normal_class))
        if self.task == "multiclass":
            return torch.tensor(self.classes.index(label))
        t = torch.zeros(self.num_outputs)
        if label != self.normal_class:
            t[self.output_names.index(label)] = 1.0
            implied = IMPLIES.get(label)
            if implied in self.output_names:
                t[self.output_names.index(implied)] = 1.0
        return t

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-output probabilities (softmax for multiclass, sigmoid otherwise)."""
        logits = logits.float()
        if self.task == "multiclass":
            return logits.softmax(dim=-1)
        return logits.sigmoid()

    def p_infected(self, logits: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(logits)
        if self.task == "binary":
            return probs.reshape(-1)
        if self.task == "multiclass":
            return 1.0 - probs[:, self.classes.index(self.normal_class)]
        return probs.max(dim=-1).values

    def class_index(self, label: str) -> int:
        return self.classes.index(self._check(label))

    def _check(self, label: str) -> str:
        """The canonical spelling of `label`, which must be one of the classes."""
        canonical = canonical_label(label)
        if canonical not in self.classes:
            raise ChestXrayError(f"label '{label}' is not one of the training classes {list(self.classes)}")
        return canonical

    def to_dict(self) -> dict:
        return {"task": self.task, "classes": list(self.classes), "normal_class": self.normal_class}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskScheme":
        # checkpoints written before class names were canonical may hold other spellings
        return cls(d["task"], tuple(canonical_label(c) for c in d["classes"]), canonical_label(d["normal_class"]))

"""The face record every dataset yields, and the result of scanning a dataset.

Conventions: ``age`` in whole years (``None`` when unknown); ``landmarks`` are five (x, y) points in the original
image's pixel coordinates, in the ArcFace order left eye, right eye, nose tip, left mouth corner, right mouth
corner ("left" = the subject's right, i.e. the eye with the smaller x in a frontal photo); ``extra`` carries any
further columns (gender, source, method, ...) as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FaceRecord:
    path: Path
    subject: str
    age: int | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def with_(self, **changes: Any) -> "FaceRecord":
        from dataclasses import replace

        return replace(self, **changes)


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, with the reason (machine-readable skipped lists use these two fields)."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class DatasetScan:
    """Records found in a source, plus every file that was seen but not used and why."""

    name: str
    root: Path
    records: list[FaceRecord]
    problems: list[Problem] = field(default_factory=list)
    # True when the source says every image is an aligned 112x112 crop (a set agebias generated as such), False
    # when it says they are not, None when it does not say
    aligned: bool | None = None

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.records})

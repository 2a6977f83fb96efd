"""Face datasets (FG-NET, manifests, generated sets, AgeDB, .bin verification files), images and alignment."""

from agebias.data.records import DatasetScan, FaceRecord, Problem

__all__ = ["DatasetScan", "FaceRecord", "Problem"]

"""Data readers and in-memory datasets (folders of images, DICOM, NIfTI, npz, the phantom)."""

from medgan.data.dataset import ImageDataset, load_dataset, phantom_dataset, training_dataset

__all__ = ["ImageDataset", "load_dataset", "phantom_dataset", "training_dataset"]

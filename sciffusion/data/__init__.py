"""xarray <-> tensors: the only place where labelled data becomes training tensors and back.

* :mod:`~sciffusion.data.coder` - ``FieldCoder``, the base of every emulator's coder (variables,
  grid, normalisation, input checks with errors naming the difference) and ``names``.
* :mod:`~sciffusion.data.io` - ``open_dataset``, ``write_zarr``, ``write_netcdf`` (atomic).
* :mod:`~sciffusion.data.normalize` - ``Normalizer`` (lazy dask statistics, JSON round trip).
* :mod:`~sciffusion.data.tensors` - ``dataset_to_tensor`` (N, C, *grid) and its inverse.
* :mod:`~sciffusion.data.pairs` - ``PairDataset`` of condition/target pairs along time,
  lead time or ensemble member.
"""

from .coder import FieldCoder, names
from .io import open_dataset, write_netcdf, write_zarr
from .normalize import Normalizer
from .pairs import PairDataset
from .tensors import dataset_to_tensor, tensor_to_dataset

__all__ = ["FieldCoder", "Normalizer", "names", "PairDataset", "dataset_to_tensor", "open_dataset",
           "tensor_to_dataset", "write_netcdf", "write_zarr"]

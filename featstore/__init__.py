"""featstore: a chunked Zarr feature store for multimodal emotion recognition, filled by batched extraction."""

__version__ = "0.1.0"

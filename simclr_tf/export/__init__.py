"""SavedModel export of a trained SimCLR model, for TF Hub style reuse.

Modules, each owning one concern:

- `hub_module`: the saved object (`SimCLRExport`), its signatures and output
  keys, the input check; the module docstring says what an export offers
  to `tf.saved_model.load`, `hub.KerasLayer` and `keras.layers.TFSMLayer`.
- `weights`: the export's own copy of the layers, filled from a model.
- `writer`: writing an export whole or not at all, its metadata, the
  automatic export at the end of a stage and the pruning of old ones.
- `loader`: opening an export, or building the same module from a
  checkpoint or model_dir (`load`, `module_from_checkpoint`).

Where an export's files lie is `simclr_tf.storage.export_layout`'s. The
names callers use are attributes of this package, each loaded from its
module on first use.
"""

from simclr_tf import _lazy

_PUBLIC = {
    "EXPORTS_DIR": "simclr_tf.storage.export_layout",
    "ExportError": "simclr_tf.storage.export_layout",
    "METADATA_FORMAT": "simclr_tf.storage.export_layout",
    "METADATA_VERSION": "simclr_tf.storage.export_layout",
    "LoadedModel": "loader",
    "export_checkpoint": "loader",
    "load": "loader",
    "module_from_checkpoint": "loader",
    "exportable_copy": "weights",
    "directory_size_mb": "writer",
    "export_model": "writer",
    "export_to_model_dir": "writer",
    "metadata": "writer",
    "prune_exports": "writer",
    "write_saved_model": "writer",
    "BLOCK_GROUPS": "hub_module",
    "ENCODER_OUTPUTS": "hub_module",
    "ENCODER_VARIABLES": "hub_module",
    "FINAL_AVG_POOL": "hub_module",
    "HEAD_OUTPUTS": "hub_module",
    "IMAGE_BYTES_INPUT": "hub_module",
    "IMAGE_BYTES_SIGNATURE": "hub_module",
    "IMAGES_INPUT": "hub_module",
    "INITIAL_CONV": "hub_module",
    "INITIAL_MAX_POOL": "hub_module",
    "LOGITS_SUP": "hub_module",
    "ModelParts": "hub_module",
    "PROJ_HEAD_INPUT": "hub_module",
    "PROJ_HEAD_OUTPUT": "hub_module",
    "PROJECTION_HEAD_VARIABLES": "hub_module",
    "SERVING_SIGNATURE": "hub_module",
    "SimCLRExport": "hub_module",
    "SUPERVISED_HEAD_VARIABLES": "hub_module",
    "TRAINING_ENDPOINT": "hub_module",
    "check_images": "hub_module",
}


__getattr__ = _lazy.attributes(__name__, {
    name: (module, name) for name, module in _PUBLIC.items()})
__all__ = sorted(_PUBLIC)

"""SavedModel export of a trained SimCLR model, for TF Hub style reuse.

The public face of the export: every name callers use, gathered from the
modules that own each concern:

- `hub_module`: the saved object (`SimCLRExport`), its signatures and output
  keys, the input check; the module docstring says what an export offers
  to `tf.saved_model.load`, `hub.KerasLayer` and `keras.layers.TFSMLayer`.
- `export_weights`: the export's own copy of the layers, filled from a model.
- `export_writer`: writing an export whole or not at all, its metadata, the
  automatic export at the end of a stage and the pruning of old ones.
- `export_loader`: opening an export, or building the same module from a
  checkpoint or model_dir (`load`, `module_from_checkpoint`).
- `export_layout`: where everything lies on disk (the only module that
  knows the paths).
- `atomic_dir`: replacing a directory atomically.
"""

# pylint: disable=unused-import
from simclr_tf.storage.export_layout import EXPORTS_DIR
from simclr_tf.storage.export_layout import ExportError
from simclr_tf.storage.export_layout import METADATA_FORMAT
from simclr_tf.storage.export_layout import METADATA_VERSION
from simclr_tf.export.loader import LoadedModel
from simclr_tf.export.loader import export_checkpoint
from simclr_tf.export.loader import load
from simclr_tf.export.loader import module_from_checkpoint
from simclr_tf.export.weights import exportable_copy
from simclr_tf.export.writer import directory_size_mb
from simclr_tf.export.writer import export_model
from simclr_tf.export.writer import export_to_model_dir
from simclr_tf.export.writer import metadata
from simclr_tf.export.writer import prune_exports
from simclr_tf.export.writer import write_saved_model
from simclr_tf.export.hub_module import BLOCK_GROUPS
from simclr_tf.export.hub_module import ENCODER_OUTPUTS
from simclr_tf.export.hub_module import ENCODER_VARIABLES
from simclr_tf.export.hub_module import FINAL_AVG_POOL
from simclr_tf.export.hub_module import HEAD_OUTPUTS
from simclr_tf.export.hub_module import IMAGE_BYTES_INPUT
from simclr_tf.export.hub_module import IMAGE_BYTES_SIGNATURE
from simclr_tf.export.hub_module import IMAGES_INPUT
from simclr_tf.export.hub_module import INITIAL_CONV
from simclr_tf.export.hub_module import INITIAL_MAX_POOL
from simclr_tf.export.hub_module import LOGITS_SUP
from simclr_tf.export.hub_module import ModelParts
from simclr_tf.export.hub_module import PROJ_HEAD_INPUT
from simclr_tf.export.hub_module import PROJ_HEAD_OUTPUT
from simclr_tf.export.hub_module import PROJECTION_HEAD_VARIABLES
from simclr_tf.export.hub_module import SERVING_SIGNATURE
from simclr_tf.export.hub_module import SimCLRExport
from simclr_tf.export.hub_module import SUPERVISED_HEAD_VARIABLES
from simclr_tf.export.hub_module import TRAINING_ENDPOINT
from simclr_tf.export.hub_module import check_images

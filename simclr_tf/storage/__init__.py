"""What a run keeps on disk, and how it writes it; TensorFlow-free.

Modules:
  files: atomic small-file writes, sizes, free space, process liveness.
  run_dir: the run directory (`RunDirectory`) and its lock (`RunLock`).
  config_file: `config.json` and the resume check.
  atomic_dir: directories that appear whole or not at all.
  export_layout: where an export keeps its files and metadata.
  write_errors: the one-line error of a failed write.

Local paths go through `os`; a path with a scheme (`gs://...`) through
`tf.io.gfile`, which is imported only then.
"""

"""Input pipelines: data sources (registry), tokenizers and the tf.data -> global-array path."""

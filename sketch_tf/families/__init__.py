"""The model families. Each sub-package is one family and has the same three modules:

- `task.py`: the Task (config validation, models, training data, losses), registered under
  the package's name;
- `evaluate.py`: metrics, tables and pictures on held-out data;
- `serving.py`: the SavedModel signatures and their warmup inputs.

Keras models live in `sketch_tf.models`, configs in `configs/<family>.py`. Generic code finds
the families through `sketch_tf.train.tasks.family_names()`.
"""

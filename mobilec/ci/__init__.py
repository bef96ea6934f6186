"""What a CI pipeline reads: run-to-run comparison with regression gates, JUnit XML,
GitHub annotations and the lockfile that pins what produced the artifacts.

Pure Python over report dicts: nothing here imports TensorFlow or a converter.
"""

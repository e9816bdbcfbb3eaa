"""The `annotator` command line: a thin parser over the annotator library."""

"""Translation between Label Studio (label config, tasks, annotations, regions) and annotator."""

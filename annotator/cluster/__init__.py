"""Beyond one machine: the batch jobs on a Ray cluster (`annotator.cluster.ray_engine.RayEngine`),
imported only for ``--engine ray``; Ray itself is an optional dependency (the ``scale`` extra).
Nothing is imported here, so a fetch task's worker loads only `annotator.cluster.fetch`."""

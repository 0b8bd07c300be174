"""Device meshes and shardings: data, model (tensor) and stage (pipeline) axes."""

"""Device meshes and shardings: data, model (tensor) and stage (pipeline) axes.

    mesh.py         the (data, model, stage) mesh from `config.mesh`
    plan.py         `ParallelPlan`: what the trainer asks of the mesh and the parallel mode
    logical.py      logical axis names of parameters and activations, rules → mesh axes
    pipeline.py     GPipe over `stage` for models with runs of identical layers
    bn_scope.py     BatchNorm statistics scopes: global, per_device, ghost, groups
    distributed.py  multi-process jobs (explicit coordinator, or SLURM)
"""

"""The package's config blocks: parsing (`blocks`), the check a run gets before fairchem
makes any folder (`check`), and the merged config a run sees (`show`).

Each class that reads a block declares it (`config_blocks`: dotted path -> dataclass;
the backbone's paths are relative to `model.backbone`); the check finds the classes of a
config through fairchem's registry, so nothing here imports the trainers or the models.
"""

"""fairchem-deq: DEQuiformer (EquiformerV2 as a deep equilibrium model) for fairchem v1.

Importing this package registers its classes in fairchem's registry under short names
(`deq_equiformer_v2_backbone`, ...). Configs can also name them by dotted path
(`fairchem_deq.models.DEQEquiformerV2Backbone`), which needs no import hook.
"""

from fairchem_deq.command import console_script_start_up

with console_script_start_up():  # Ctrl-C while `fairchem-deq` imports torch: rc 130, no traceback
    from fairchem_deq.models import DEQBackboneOptions, DEQEquiformerV2Backbone
    from fairchem_deq.simulate import DEQCalculator, run_md, run_relaxation
    from fairchem_deq.solve import DEQDivergenceError
    from fairchem_deq.trainers import DEQForcesTrainer

__version__ = "0.1.0"

__all__ = [
    "DEQBackboneOptions",
    "DEQCalculator",
    "DEQDivergenceError",
    "DEQEquiformerV2Backbone",
    "DEQForcesTrainer",
    "__version__",
    "run_md",
    "run_relaxation",
]

"""Checks the DeNS keys of fairchem's `optim` block before fairchem's DeNS trainer reads them.

fairchem's DenoisingForcesTrainer indexes these keys directly: a missing key is a bare
KeyError, a misspelt one a TypeError from a dataclass, a missing noise std a crash at the
first noisy step, an integer std an obscure buffer error. Here each is a ValueError naming
the key.

    optim:
      use_denoising_pos: True         # False: DeNS off (plain S2EF training, same model)
      denoising_pos_params:           # fairchem's DenoisingPosParams
        prob: 0.25                    # fraction of training batches that are noised
        fixed_noise_std: True         # True: one std; False: log-spaced std_low..std_high
        std: 0.05                     # Å
        corrupt_ratio: 0.25           # fraction of atoms noised (None: all free atoms)
      denoising_pos_coefficient: 5    # loss weight of the noise prediction
"""

from __future__ import annotations

import math

from fairchem.core.models.equiformer_v2.trainers.dens_trainer import DenoisingPosParams

from fairchem_deq.config.blocks import parse_options

KEYS = ("use_denoising_pos", "denoising_pos_params", "denoising_pos_coefficient")


def check_dens_options(optim: dict) -> DenoisingPosParams:
    """Validates `optim` in place (integer stds become floats, as fairchem needs)."""
    missing = [key for key in KEYS if key not in optim]
    if missing:
        raise ValueError(
            f"DeNS training needs optim keys {missing} (see configs/includes/md/deq1_dens.yml); "
            "set optim.use_denoising_pos: False to train without denoising"
        )
    if not isinstance(optim["use_denoising_pos"], bool):
        raise ValueError(f"optim.use_denoising_pos must be True or False, got {optim['use_denoising_pos']!r}")
    where = "optim.denoising_pos_params"
    params = parse_options(DenoisingPosParams, optim["denoising_pos_params"], where)
    _number(optim["denoising_pos_coefficient"], "optim.denoising_pos_coefficient", positive=True)
    prob = _number(params.prob, f"{where}.prob")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{where}.prob must be in [0, 1], got {prob}")
    if params.fixed_noise_std:
        stds = ("std",)
    else:
        stds = ("std_low", "std_high")
        steps = params.num_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"{where}.num_steps must be an int >= 1 with fixed_noise_std: False, got {steps!r}")
    for key in stds:
        value = _number(getattr(params, key), f"{where}.{key}", positive=True)
        optim["denoising_pos_params"][key] = value
    if not params.fixed_noise_std and params.std_low > params.std_high:
        raise ValueError(f"{where}.std_low ({params.std_low}) exceeds std_high ({params.std_high})")
    ratio = params.corrupt_ratio
    if ratio is not None and not 0.0 < _number(ratio, f"{where}.corrupt_ratio") <= 1.0:
        raise ValueError(f"{where}.corrupt_ratio must be in (0, 1] or None, got {ratio}")
    return params


def _number(value, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where} must be > 0, got {value}")
    return float(value)

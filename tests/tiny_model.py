"""The CPU-test DEQuiformer, defined once.

TINY_WIDTH shrinks the paper's MD "mini" model (configs/includes/md/base.yml) to a CPU-test
size. Tests that run a shipped config apply it as fairchem CLI overrides
(cli_helpers.TINY_OVERRIDES) or merge it into the config's backbone (test_configs);
TINY_BACKBONE is a complete backbone at that width for tests that build a model directly
(conftest.make_model).
"""

from __future__ import annotations

TINY_WIDTH = dict(
    sphere_channels=16,
    attn_hidden_channels=8,
    num_heads=2,
    attn_alpha_channels=8,
    attn_value_channels=4,
    ffn_hidden_channels=16,
    lmax_list=[2],
    mmax_list=[2],
    grid_resolution=8,
    num_sphere_samples=32,
    edge_channels=16,
)

# the same structure as the paper's MD "mini" model, at TINY_WIDTH (20 neighbours, no dropout)
TINY_BACKBONE = dict(
    use_pbc=True,
    regress_forces=True,
    otf_graph=True,
    max_neighbors=20,
    max_radius=5.0,
    max_num_elements=90,
    norm_type="rms_norm_sh",
    alpha_drop=0.0,
    drop_path_rate=0.0,
    **TINY_WIDTH,
)

"""Shared pieces of the benchmarks: model widths of the paper, timing, result files.

Timings are compared inside one process, interleaved, as ratios of medians: these machines
are shared and noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(os.environ.get("FAIRCHEM_DEQ_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
TEST_DATA = Path(__file__).parents[1] / "tests" / "data"
CONFIG_INCLUDES = Path(__file__).parents[1] / "configs" / "includes"

# The backbone hyper-parameters (graph, widths, norm, dropout) the benchmark models take from
# the shipped configs; the other backbone keys keep EquiformerV2's defaults here.
WIDTH_KEYS = (
    "use_pbc",
    "otf_graph",
    "max_neighbors",
    "max_radius",
    "max_num_elements",
    "sphere_channels",
    "attn_hidden_channels",
    "num_heads",
    "attn_alpha_channels",
    "attn_value_channels",
    "ffn_hidden_channels",
    "norm_type",
    "lmax_list",
    "mmax_list",
    "grid_resolution",
    "num_sphere_samples",
    "edge_channels",
    "alpha_drop",
    "drop_path_rate",
)


def config_width(*includes: str) -> dict:
    """WIDTH_KEYS of the backbone that configs/includes/<include>... set (later files win)."""
    backbone = {}
    for name in includes:
        backbone.update(yaml.safe_load((CONFIG_INCLUDES / name).read_text())["model"]["backbone"])
    return {key: backbone[key] for key in WIDTH_KEYS}


# The paper's MD "mini" model and its OC20 S2EF-200k width, as the configs define them.
MD_MINI = config_width("md/base.yml")
OC20_200K = config_width("oc20/base.yml", "oc20/deq1.yml")
HEADS = {
    "energy": {"module": "equiformerV2_scalar_head"},
    "forces": {"module": "equiformerV2_vector_head"},
}


def build_model(width: dict, num_layers: int, deq: dict | None = None, seed: int = 0):
    """Hydra model: DEQ backbone when `deq` is given, else fairchem's explicit EquiformerV2."""
    from fairchem.core.models.base import HydraModel

    import fairchem_deq  # noqa: F401

    torch.manual_seed(seed)
    if deq is None:
        backbone = dict(width, model="equiformer_v2_backbone", num_layers=num_layers)
    else:
        backbone = dict(width, model="deq_equiformer_v2_backbone", num_layers=num_layers, deq=deq)
    model = HydraModel(backbone=backbone, heads=HEADS, otf_graph=True)
    # fairchem's explicit backbone forces autograd on in forward; its forces come from a head
    # here too, so turn that off for a like-for-like inference timing.
    model.backbone.direct_forces = True
    return model


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(name: str, payload: dict) -> Path:
    """Atomic write of benchmarks/results/<name>.json."""
    from fairchem_deq.outputs import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(RESULTS / f"{name}.json", json.dumps(payload, indent=2))


def read_json(name: str) -> dict:
    """benchmarks/results/<name>.json, or {} before its first run (for merging runs)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_figure(fig, name: str) -> Path:
    """Atomic write of benchmarks/results/<name>.png (the package's partial file and rename)."""
    from fairchem_deq.outputs import partial_path

    path = RESULTS / f"{name}.png"
    tmp = partial_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

"""Edge frames and Wigner-D matrices that carry the positions' gradient.

fairchem's EquiformerV2 detaches each edge's rotation matrix (`init_edge_rot_mat`) and the
Wigner-D matrices built from it (`SO3_Rotation.set_wigner`): harmless for forces from a
head, but with forces = -dE/dpos the derivative through the edge frames is lost (the SO(2)
convolutions see each neighbour in its edge's frame). These functions rebuild the same
values with that derivative attached, only where positions require a gradient:

- `edge_frames`: each edge frame as a function of the edge vector, around fairchem's random
  reference vector of that edge (recovered by replaying the random draw), valued exactly as
  fairchem's detached frame;
- `wigner_with_gradient`: D(R) = D(R R0^T) D(R0) (fairchem's D is a homomorphism), and near
  R0 D(R R0^T) = I + sum_k w_k J_k with J_k the generators of D on the real spherical
  harmonics (computed once per lmax from fairchem's own D, in float64) and w the rotation
  vector of R R0^T, zero in value: the value is fairchem's D(R0), the first derivative exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# so(3) generators K_k with exp(t K_k) the rotation by t about axis k
_SO3 = torch.tensor(
    [
        [[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
        [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]],
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ],
    dtype=torch.float64,
)
_generators: dict[int, torch.Tensor] = {}


def replay_random(tensor: torch.Tensor, draw):
    """Runs `draw()` (which consumes torch's random numbers) and returns its result together
    with `torch.rand_like(tensor)` as it drew it first: the random numbers `draw` used, for a
    `draw` that starts with that call (as fairchem's `init_edge_rot_mat` does)."""
    cuda = tensor.device.type == "cuda"
    get = (lambda: torch.cuda.get_rng_state(tensor.device)) if cuda else torch.get_rng_state
    put = (lambda s: torch.cuda.set_rng_state(s, tensor.device)) if cuda else torch.set_rng_state
    before = get()
    result = draw()
    after = get()
    put(before)
    raw = torch.rand_like(tensor)
    put(after)
    return result, raw


def edge_frames(edge_vec: torch.Tensor, raw: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """fairchem's detached edge frames `frames` [E, 3, 3] (rows: z, x = edge direction, -y)
    with the derivative in `edge_vec` attached. `raw` are the uniform numbers fairchem drew:
    its reference vector is one of three 90-degree turns of raw - 0.5 (the one least aligned
    with the edge); the one that reproduces the frame's z row is taken."""
    x = F.normalize(edge_vec, dim=1)
    v = F.normalize(raw.to(edge_vec.dtype) - 0.5, dim=1)
    turned_z = torch.stack([-v[:, 1], v[:, 0], v[:, 2]], dim=1)
    turned_x = torch.stack([v[:, 0], -v[:, 2], v[:, 1]], dim=1)
    candidates = torch.stack([v, turned_z, turned_x], dim=1)  # [E, 3, 3]
    z_of = F.normalize(torch.cross(x.detach().unsqueeze(1).expand_as(candidates), candidates, dim=2), dim=2)
    pick = (z_of * frames[:, 0].unsqueeze(1)).sum(dim=2).argmax(dim=1)
    reference = candidates[torch.arange(len(v), device=v.device), pick]
    z = F.normalize(torch.cross(x, reference, dim=1), dim=1)
    y = F.normalize(torch.cross(x, z, dim=1), dim=1)
    differentiable = torch.stack([z, x, -y], dim=1)
    return frames + (differentiable - differentiable.detach())


def wigner_generators(lmax: int) -> torch.Tensor:
    """[3, L, L] generators J_k = d/dt D(exp(t K_k)) at t = 0 of fairchem's Wigner-D map for
    degrees 0..lmax, by central differences in float64 around a generic rotation (error ~1e-9)."""
    if lmax in _generators:
        return _generators[lmax]
    from e3nn import o3
    from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation

    rotation = SO3_Rotation(lmax)
    rotation.device = torch.device("cpu")

    def wigner_of(rot):
        return rotation.RotationToWignerDMatrix(rot, 0, lmax)

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # fairchem builds its D in the default dtype
    try:
        base = o3.angles_to_matrix(torch.tensor(0.3), torch.tensor(1.1), torch.tensor(-0.7))
        h = 1e-5
        steps = torch.stack([torch.matrix_exp(s * h * k) @ base for k in _SO3 for s in (1.0, -1.0)])
        d = wigner_of(steps).double().view(3, 2, *wigner_of(base[None]).shape[1:])
        d0 = wigner_of(base[None]).double()[0]
        generators = (d[:, 0] - d[:, 1]) / (2 * h) @ d0.T
    finally:
        torch.set_default_dtype(default)
    _generators[lmax] = generators = 0.5 * (generators - generators.transpose(1, 2))  # exactly skew
    return generators


def wigner_with_gradient(rot: torch.Tensor, wigner: torch.Tensor, generators: torch.Tensor) -> torch.Tensor:
    """fairchem's detached D(rot) `wigner` [E, L, L] with the first derivative in `rot`
    (rotation matrices that carry a gradient, valued as those `wigner` was built from)."""
    delta = rot @ rot.detach().transpose(1, 2)  # the identity in value
    skew = 0.5 * (delta - delta.transpose(1, 2))
    omega = torch.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], dim=1)
    omega = omega - omega.detach()
    step = torch.einsum("ek,kab->eab", omega, generators.to(device=wigner.device, dtype=wigner.dtype))
    return wigner + step @ wigner

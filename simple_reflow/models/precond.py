"""EDM's preconditioning around a backbone, and its flow-time view (METHOD.md §1).

EDM (Karras et al. 2022, Table 1 / ``EDMPrecond``) writes the denoiser in σ-space as

    D_EDM(x; σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; c_noise(σ), cond),
    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ·σ_d/√(σ² + σ_d²),
    c_in = 1/√(σ² + σ_d²),      c_noise = ln(σ)/4,

with σ_d = 0.5. The library's networks are denoisers in flow time (data at t = 0, noise at
t = 1); METHOD.md §1 maps one to the other by D(x_t, t) = D_EDM(x_t/(1 − t); t/(1 − t)), so
one set of weights serves as EDM teacher and as ReFlow student with no new parameters.

A two-time backbone (``two_time=True``, MeanFlow / SplitMeanFlow, METHOD.md §9) makes the same
wrapper an average-velocity denoiser: ``model(x_t, t, cond, r=r)`` is D_u(x_t, r, t) with
u = (x_t − D_u)/t [recon], the preconditioning applied to D_u as to D (σ = t/(1 − t) from the
end time t) and the interval t − r passed to the backbone; ``r=None`` (r = t) is the ordinary
denoiser, which a teacher's weights give unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from simple_reflow import paths

__all__ = ["COMPUTE_DTYPES", "edm_coefficients", "EDMDenoiser"]

COMPUTE_DTYPES = ("float32", "bfloat16")


def edm_coefficients(sigma, sigma_data: float = 0.5):
    """EDM's preconditioning coefficients (EDM Table 1).

    Args:
      sigma: noise levels, any shape.
      sigma_data: the data's standard deviation σ_d.

    Returns:
      ``(c_skip, c_out, c_in, c_noise)``, each shaped like ``sigma``.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    s2 = jnp.square(sigma) + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data * jnp.sqrt(1.0 / s2)
    c_in = jnp.sqrt(1.0 / s2)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


class EDMDenoiser(nnx.Module):
    """A backbone ``F(x, c_noise, cond, *, key)`` behind EDM's preconditioning.

    Dropout (inside the backbone) and label dropout are active iff ``key`` is given.

    Args:
      backbone: an NNX module called as ``backbone(x, c_noise, cond, key=key)`` with
        ``x [B, ...]``, ``c_noise [B]``, returning ``[B, ...]`` (:class:`SongUNet`,
        :class:`DhariwalUNet`).
      sigma_data: σ_d of EDM's preconditioning (0.5 for images in [−1, 1]).
      t_clip: the flow-time call clips t to ``[t_clip, 1 − t_clip]`` so σ stays finite and
        positive (σ ∈ [1e-5, 1e5] for the default; our choice, [recon]); the EDM-space call
        does not clip.
      dtype: the backbone's compute dtype, ``"float32"`` or ``"bfloat16"`` (mixed precision:
        the backbone's input is cast to it, parameters and the preconditioning stay float32,
        and the output is cast back to float32, as EDM's ``use_fp16``).
    """

    def __init__(
        self,
        backbone: nnx.Module,
        sigma_data: float = 0.5,
        t_clip: float = paths.T_EPS,
        dtype: str = "float32",
    ):
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.t_clip = float(t_clip)
        self.dtype = dtype

    def edm(self, x_ve, sigma, cond=None, *, key=None, interval=None):
        """EDM's denoiser D_EDM(x; σ) in variance-exploding coordinates.

        Args:
          x_ve: ``[B, ...]`` noisy data x0 + σ·n.
          sigma: ``[B]`` or scalar noise level σ > 0.
          cond: class labels for the backbone (``[B]`` int, ``num_classes`` = null) or ``None``.
          key: PRNG key enabling dropout, or ``None`` (deterministic).
          interval: ``[B]`` flow-time interval t − r for a two-time backbone, or ``None``.

        Returns:
          ``[B, ...]`` estimate of x0.
        """
        x_ve = jnp.asarray(x_ve, jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x_ve.shape[:1])
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        expand = lambda c: paths.expand_t(c, x_ve)
        x_in = (expand(c_in) * x_ve).astype(self.dtype)
        extra = {} if interval is None else {"interval": interval}
        f = self.backbone(x_in, c_noise, cond, key=key, **extra)
        return expand(c_skip) * x_ve + expand(c_out) * f.astype(jnp.float32)

    def __call__(self, x_t, t, cond=None, *, r=None, key=None):
        """Flow-time denoiser D(x_t, t) = D_EDM(x_t/(1 − t); t/(1 − t)) (METHOD.md §1).

        Args:
          x_t: ``[B, ...]`` point on the straight path (1 − t)·x0 + t·x1.
          t: ``[B]`` or scalar flow time in [0, 1] (clipped to ``[t_clip, 1 − t_clip]``).
          cond: class labels or ``None``.
          r: ``[B]`` start time r ≤ t of a two-time backbone: the output is then D_u(x_t, r, t),
            u = (x_t − D_u)/t the average velocity over [r, t] (METHOD.md §9); ``None`` means
            r = t. A one-time backbone rejects it.
          key: PRNG key enabling dropout, or ``None``.

        Returns:
          ``[B, ...]`` estimate of E[x0 | x_t] (or D_u).
        """
        x_t = jnp.asarray(x_t, jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
        interval = None if r is None else t - jnp.asarray(r, jnp.float32)
        t = jnp.clip(t, self.t_clip, 1.0 - self.t_clip)
        return self.edm(
            paths.to_ve(x_t, t), paths.sigma_from_t(t), cond, key=key, interval=interval
        )

"""EDM samplers in the k-diffusion style: one contract, one registry, and the σ schedules they follow.

A *denoiser* is any callable ``denoiser(x, sigma) -> denoised`` with x (B, C, H, W) and sigma (B,).
Every sampler keeps one contract::

    sampler(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x

- ``x`` is the initial noise already multiplied by ``sigmas[0]``; ``sigmas`` (steps+1,) falls to 0
  (a *schedule*, e.g. ``karras_sigmas``).
- ``generator`` draws the fresh noise a stochastic sampler adds (on its own device, the CPU for
  ``torch.Generator()``, so a seed gives the same samples everywhere); deterministic samplers ignore it.
- ``callback(step, sigma, x, denoised)`` runs after each step, with ``sigma = sigmas[step]``.
- ``options`` are the sampler's own keyword-only arguments with defaults (e.g. ``s_churn``); its
  registry entry gives each a help line, which the CLI (``workbench sample --s-churn``) and
  SamplerPanel show.

The ODE arithmetic is float64 (as in EDM); the denoiser is called in float32::

    sigmas = karras_sigmas(30)                                  # (31,) float64, ends with 0
    x = torch.randn(4, 4, 32, 32, dtype=torch.float64) * sigmas[0]
    images = sample_heun(cfg_denoiser(model, caption, sigma_data=0.5), x, sigmas)

Adding a sampler is one registered function (docs/architecture.md, "Adding a sampler")::

    @register_sampler("my-euler", "Euler with a damped step", options={"damping": "step factor in (0, 1]"})
    def sample_my_euler(denoiser, x, sigmas, *, generator=None, callback=None, damping=1.0): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from workbench.diffusion.edm import EDMConfig
from ..errors import InputError

# -----------------------------------------------------------------------------
# The registry

DEFAULT_SAMPLER = "heun"      # what `sample`, the CLI, the widgets and the evaluations use unless told
DEFAULT_SCHEDULE = "karras"   # the σ schedule `sample` follows unless told


@dataclass(frozen=True)
class SamplerOption:
    """One extra keyword argument of a sampler: its name, its default and a help line."""

    name: str       # the keyword, e.g. "s_churn"
    default: float  # read from the sampler's signature
    help: str       # one line, shown by `workbench sample --help` and SamplerPanel


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler: the function, one line saying what it is, and its extra options."""

    name: str                                # e.g. "heun"
    fn: Callable                             # follows the sampler contract of this module
    description: str                         # one line, citing the paper
    options: tuple[SamplerOption, ...] = ()  # its keyword-only extras
    pipeline_scheduler: str | None = None    # the diffusers scheduler class standing for it in a MicroDiTPipeline

    def resolve(self, options: Mapping[str, float] | None = None) -> dict[str, float]:
        """Every option of this sampler: the defaults, updated with ``options`` (an unknown name is an error)."""
        known = {o.name: o.default for o in self.options}
        unknown = sorted(set(options or {}) - set(known))
        if unknown:
            takes = f"takes {', '.join(known)}" if known else "takes no options"
            raise InputError(f"sampler {self.name!r} has no option {', '.join(map(repr, unknown))}; it {takes}")
        return {**known, **(options or {})}


SAMPLERS: dict[str, SamplerEntry] = {}   # name -> entry, in registration order (the CLI and widget order)


def register_sampler(name: str, description: str, options: Mapping[str, str] | None = None,
                     pipeline_scheduler: str | None = None):
    """Decorator: register a sampler under ``name``; ``options`` maps each extra keyword to its help line.

    The options' defaults are the function's own keyword defaults, so they are written once.

    Example::

        @register_sampler("my-euler", "Euler with a damped step", options={"damping": "step factor"})
        def sample_my_euler(denoiser, x, sigmas, *, generator=None, callback=None, damping=1.0): ...
    """
    def register(fn: Callable) -> Callable:
        if name in SAMPLERS:
            raise InputError(f"a sampler named {name!r} is already registered")
        params = inspect.signature(fn).parameters
        for needed in ("generator", "callback"):
            if needed not in params or params[needed].kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"sampler {name!r}: {fn.__name__} must take a keyword-only {needed!r}")
        declared = []
        for option, text in (options or {}).items():
            param = params.get(option)
            if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is param.empty:
                raise TypeError(f"sampler {name!r}: option {option!r} must be a keyword-only argument "
                                f"of {fn.__name__} with a default")
            declared.append(SamplerOption(option, param.default, text))
        SAMPLERS[name] = SamplerEntry(name, fn, description, tuple(declared), pipeline_scheduler)
        return fn

    return register


def get_sampler(name: str) -> SamplerEntry:
    """The registry entry of ``name``; an unknown name is an error that lists the known ones."""
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")
    return SAMPLERS[name]


# -----------------------------------------------------------------------------
# Noise schedules: schedule(steps, edm, device) -> (steps+1,) float64, from σ_max down to 0

def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The Karras et al. (2022) schedule: ``steps`` levels from σ_max to σ_min, then 0. Shape (steps+1,) float64."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps!r}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64, device=device)          # (steps,)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho               # (steps,)
    return torch.cat([sigmas, sigmas.new_zeros(1)])                                  # (steps+1,)


def karras_schedule(steps: int, edm: EDMConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """`karras_sigmas` with the σ_min, σ_max and ρ of an `EDMConfig` (Karras et al. 2022, Eq. 5)."""
    return karras_sigmas(steps, edm.sigma_min, edm.sigma_max, edm.rho, device)


SCHEDULES: dict[str, Callable] = {"karras": karras_schedule}   # name -> schedule(steps, edm, device)


def get_schedule(name: str) -> Callable:
    """The schedule registered as ``name``; an unknown name is an error that lists the known ones."""
    if name not in SCHEDULES:
        raise InputError(f"unknown schedule {name!r}; choose one of {list(SCHEDULES)}")
    return SCHEDULES[name]


# -----------------------------------------------------------------------------
# Shared steps

def ode_derivative(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """dx/dσ = (x − D(x; σ)) / σ of the probability-flow ODE (Karras et al. 2022, Eq. 1 with σ(t) = t)."""
    return (x - denoised) / sigma


def denoise_at(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x; σ): the denoiser called in float32 with a (B,) σ, returned in float64 (the samplers' arithmetic)."""
    s = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)  # (B,)
    return denoiser(x.to(torch.float32), s).to(torch.float64)


def _heun_step(denoiser, x: torch.Tensor, sigma: float, sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Heun's method from σ to σ_next, Euler when σ_next = 0; returns (x_next, D(x; σ))."""
    denoised = denoise_at(denoiser, x, sigma)
    d = ode_derivative(x, denoised, sigma)
    x_next = x + (sigma_next - sigma) * d
    if sigma_next > 0:                                   # 2nd-order correction
        d_next = ode_derivative(x_next, denoise_at(denoiser, x_next, sigma_next), sigma_next)
        x_next = x + (sigma_next - sigma) * (d + d_next) / 2
    return x_next, denoised


# -----------------------------------------------------------------------------
# Samplers: one contract, a per-step callback

@register_sampler("heun", "Heun's 2nd-order deterministic sampler (Karras et al. 2022, Algorithm 1)",
                  pipeline_scheduler="MicroDiTHeunScheduler")
@torch.no_grad()
def sample_heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None, callback=None) -> torch.Tensor:
    """Heun's 2nd-order deterministic sampler, Euler on the last step (Karras et al. 2022, Algorithm 1)."""
    out_dtype, x = x.dtype, x.to(torch.float64)
    levels = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x, denoised = _heun_step(denoiser, x, sigma, sigma_next)
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x.to(out_dtype)


@register_sampler("euler", "Euler's method on the probability-flow ODE (Karras et al. 2022, Eq. 1)")
@torch.no_grad()
def sample_euler(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None, callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, Eq. 1)."""
    out_dtype, x = x.dtype, x.to(torch.float64)
    levels = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise_at(denoiser, x, sigma)
        x = x + (sigma_next - sigma) * ode_derivative(x, denoised, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x.to(out_dtype)


@register_sampler("edm-stochastic", "EDM's stochastic sampler: noise churn, then a Heun step "
                                    "(Karras et al. 2022, Algorithm 2)",
                  options={"s_churn": "total churn; γ = min(s_churn / steps, √2 − 1) per step, 0 is Heun",
                           "s_tmin": "add noise only at σ >= s_tmin",
                           "s_tmax": "add noise only at σ <= s_tmax",
                           "s_noise": "std of the added noise (just above 1 offsets detail lost to the denoiser)"})
@torch.no_grad()
def sample_edm_stochastic(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None, callback=None,
                          s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0,
                          s_noise: float = 1.003) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): σ up to σ̂ = (1 + γ)·σ with fresh noise, then
    a Heun step from σ̂. The defaults are the paper's ImageNet-64 settings (Table 5); ``s_churn=0`` is Heun.
    """
    out_dtype, x = x.dtype, x.to(torch.float64)
    levels = sigmas.tolist()
    gamma_max = min(s_churn / (len(levels) - 1), 2 ** 0.5 - 1)
    draw_device = generator.device if generator is not None else "cpu"
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma + gamma * sigma
        if gamma > 0:                                    # no draw at all when there is no churn
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=draw_device)  # (B, C, H, W)
            x = x + (sigma_hat ** 2 - sigma ** 2) ** 0.5 * s_noise * eps.to(x.device)
        x, denoised = _heun_step(denoiser, x, sigma_hat, sigma_next)
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x.to(out_dtype)

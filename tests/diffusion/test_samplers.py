"""Specification of the sampler contract, the registry, the σ schedules and the EDM samplers."""

from __future__ import annotations

import inspect

import pytest
import torch

from workbench.diffusion.edm import EDMConfig
from workbench.diffusion.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    SAMPLERS,
    SCHEDULES,
    get_sampler,
    get_schedule,
    karras_schedule,
    karras_sigmas,
    ode_derivative,
    register_sampler,
    sample_edm_stochastic,
    sample_euler,
    sample_heun,
)

MU, S = 1.5, 0.5  # the 1-D Gaussian data set N(MU, S²)


def gaussian_denoiser(mu=MU, s=S):
    """The exact denoiser E[x0 | x] of the data set N(mu, s²): D(x; σ) = (s²·x + σ²·mu) / (s² + σ²)."""
    def denoise(x, sigma):
        sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
        return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)
    return denoise


def exact_flow(noise, sigma_max=80.0, mu=MU, s=S):
    """Where the probability-flow ODE of N(mu, s²) takes x(σ_max) = σ_max·noise at σ = 0."""
    return mu + (sigma_max * noise - mu) * s / (s ** 2 + sigma_max ** 2) ** 0.5


def standard_noise(n, seed=0):
    """n antithetic standard-normal draws rescaled to mean 0 and std 1 exactly (removes sampling error)."""
    half = torch.randn(n // 2, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise = torch.cat([half, -half])
    return noise / noise.std()


# -----------------------------------------------------------------------------
# Schedule

def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_zero():
    sigmas = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float64
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_karras_sigmas_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0)


# -----------------------------------------------------------------------------
# Samplers


def test_heun_recovers_gaussian_mean_and_std():
    noise = standard_noise(20000)
    x = sample_heun(gaussian_denoiser(), noise * 80.0, karras_sigmas(40))
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.02)


def test_heun_converges_at_second_order_and_euler_at_first():
    noise = standard_noise(200)
    exact = exact_flow(noise)

    def error(sampler, steps):
        return (sampler(gaussian_denoiser(), noise * 80.0, karras_sigmas(steps)) - exact).abs().max().item()

    assert error(sample_heun, 20) / error(sample_heun, 40) > 3.0      # ~4 for a 2nd-order method
    assert 1.5 < error(sample_euler, 20) / error(sample_euler, 40) < 2.5
    assert error(sample_heun, 20) < error(sample_euler, 20) / 2


def test_heun_takes_an_euler_step_to_sigma_zero():
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma[0].item())
        return gaussian_denoiser()(x, sigma)

    sample_heun(denoiser, torch.randn(4, 1, dtype=torch.float64) * 80, karras_sigmas(5))
    assert len(seen) == 2 * 5 - 1
    assert min(seen) > 0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_runs_after_each_step_with_the_denoised_estimate(name):
    events = []
    sigmas = karras_sigmas(4)
    x = SAMPLERS[name].fn(gaussian_denoiser(), torch.randn(3, 1, dtype=torch.float64) * 80, sigmas,
                          callback=lambda i, sigma, x, denoised: events.append((i, sigma, x.clone(), denoised)))
    assert [e[0] for e in events] == [0, 1, 2, 3]
    assert [e[1] for e in events] == pytest.approx(sigmas[:-1].tolist())
    assert torch.equal(events[-1][2], x)
    assert events[0][3].shape == (3, 1)


def test_denoiser_is_called_in_float32_and_the_result_keeps_the_input_dtype():
    dtypes = []

    def denoiser(x, sigma):
        dtypes.append((x.dtype, sigma.dtype, sigma.shape))
        return x * 0

    x = sample_heun(denoiser, torch.randn(3, 2, dtype=torch.float64), karras_sigmas(2))
    assert x.dtype == torch.float64
    assert set(dtypes) == {(torch.float32, torch.float32, (3,))}



# -----------------------------------------------------------------------------
# The contract and the registry

def test_every_registered_sampler_keeps_the_contract():
    for entry in SAMPLERS.values():
        params = inspect.signature(entry.fn).parameters
        assert list(params)[:3] == ["denoiser", "x", "sigmas"], entry.name
        extras = {n: p for n, p in params.items() if n not in ("denoiser", "x", "sigmas")}
        assert set(extras) == {"generator", "callback", *(o.name for o in entry.options)}, entry.name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras.values()), entry.name
        assert entry.description and entry.fn.__doc__, entry.name


def test_the_registry_holds_our_samplers_and_the_diffusers_schedulers_in_order():
    assert list(SAMPLERS) == ["heun", "euler", "edm-stochastic", "diffusers-euler", "diffusers-dpmpp"]
    assert DEFAULT_SAMPLER == "heun" and DEFAULT_SCHEDULE == "karras" and SCHEDULES[DEFAULT_SCHEDULE] is karras_schedule
    assert {e.pipeline_scheduler for e in SAMPLERS.values()} == {
        "MicroDiTHeunScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", None}


def test_option_defaults_come_from_the_sampler_signature():
    entry = get_sampler("edm-stochastic")
    assert {o.name: o.default for o in entry.options} == {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                                          "s_noise": 1.003}
    assert all(o.help for o in entry.options)
    assert entry.resolve({"s_churn": 5}) == {"s_churn": 5.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}


def test_an_unknown_option_names_the_ones_the_sampler_takes():
    with pytest.raises(ValueError, match="no option 'churn'.*takes s_churn, s_tmin, s_tmax, s_noise"):
        get_sampler("edm-stochastic").resolve({"churn": 1.0})
    with pytest.raises(ValueError, match="'heun' has no option 's_churn'; it takes no options"):
        get_sampler("heun").resolve({"s_churn": 1.0})


def test_unknown_sampler_and_schedule_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown sampler 'ddim'; choose one of \['heun', 'euler', 'edm-stochastic'"):
        get_sampler("ddim")
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'; choose one of \['karras'\]"):
        get_schedule("cosine")


def test_registering_a_sampler_is_one_decorated_function():
    @register_sampler("test-damped-euler", "Euler with a damped step", options={"damping": "step factor"})
    def damped(denoiser, x, sigmas, *, generator=None, callback=None, damping=1.0):
        """Euler, each step scaled by ``damping``."""
        return x

    try:
        assert SAMPLERS["test-damped-euler"].fn is damped
        assert SAMPLERS["test-damped-euler"].resolve() == {"damping": 1.0}
        with pytest.raises(ValueError, match="already registered"):
            register_sampler("test-damped-euler", "again")(damped)
    finally:
        del SAMPLERS["test-damped-euler"]


def test_a_sampler_outside_the_contract_is_refused_at_registration():
    def positional_callback(denoiser, x, sigmas, callback=None, *, generator=None):
        return x

    def undeclared_default(denoiser, x, sigmas, *, generator=None, callback=None, gain):
        return x

    with pytest.raises(TypeError, match="keyword-only 'callback'"):
        register_sampler("test-bad", "bad")(positional_callback)
    with pytest.raises(TypeError, match="option 'gain' must be a keyword-only argument .* with a default"):
        register_sampler("test-bad", "bad", options={"gain": "gain"})(undeclared_default)
    assert "test-bad" not in SAMPLERS


def test_karras_schedule_reads_the_edm_config():
    edm = EDMConfig(sigma_min=0.01, sigma_max=10.0, rho=5.0)
    assert torch.equal(karras_schedule(6, edm), karras_sigmas(6, 0.01, 10.0, 5.0))


def test_ode_derivative_is_x_minus_denoised_over_sigma():
    x, denoised = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(ode_derivative(x, denoised, 2.0), torch.tensor([1.0, -1.0]))


# -----------------------------------------------------------------------------
# EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on N(0, s²), whose exact denoiser is x·s²/(s²+σ²)

def algorithm_2(denoiser, x, t, generator, s_churn, s_tmin, s_tmax, s_noise):
    """Algorithm 2 of Karras et al. (2022), line by line, noise ε drawn in float64 on the CPU at every step."""
    n = len(t) - 1
    for i in range(n):
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64) * s_noise
        t_hat = t[i] + gamma * t[i]
        x_hat = x + (t_hat ** 2 - t[i] ** 2) ** 0.5 * eps
        d = (x_hat - denoiser(x_hat.float(), torch.full((x.shape[0],), t_hat)).double()) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x - denoiser(x.float(), torch.full((x.shape[0],), t[i + 1])).double()) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (d / 2 + d_prime / 2)
    return x


def test_edm_stochastic_follows_algorithm_2():
    noise, t = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64), karras_sigmas(12)
    options = dict(s_churn=20.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.003)   # churn at every step
    ours = sample_edm_stochastic(gaussian_denoiser(0.0), noise * 80, t, generator=torch.Generator().manual_seed(1),
                                 **options)
    paper = algorithm_2(gaussian_denoiser(0.0), noise * 80, t.tolist(), torch.Generator().manual_seed(1), **options)
    torch.testing.assert_close(ours, paper, rtol=1e-12, atol=1e-12)


def test_edm_stochastic_samples_have_the_data_std():
    noise = standard_noise(20000)

    def samples(steps):
        return sample_edm_stochastic(gaussian_denoiser(0.0), noise * 80, karras_sigmas(steps),
                                     generator=torch.Generator().manual_seed(0), s_churn=40.0, s_tmin=0.0,
                                     s_tmax=float("inf"), s_noise=1.0)             # churn γ = √2 − 1 at every step

    x = samples(160)
    assert abs(x.mean().item()) < 0.02                         # 0 ± ~3 standard errors (S/√n = 0.0035)
    assert x.std().item() == pytest.approx(S, rel=0.02)         # std error of the std ≈ 0.5% at n = 20000
    # churn adds discretisation error that shrinks with the step count (measured: std 0.552 at 20, 0.518 at 40)
    assert abs(samples(40).std().item() - S) > abs(x.std().item() - S)


def test_edm_stochastic_without_churn_is_the_heun_sampler_exactly():
    noise = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = karras_sigmas(9)
    heun = sample_heun(gaussian_denoiser(), noise * 80, sigmas)
    assert torch.equal(sample_edm_stochastic(gaussian_denoiser(), noise * 80, sigmas, s_churn=0.0), heun)
    outside = sample_edm_stochastic(gaussian_denoiser(), noise * 80, sigmas, s_tmin=100.0, s_tmax=200.0)
    assert torch.equal(outside, heun)                          # churn only inside [s_tmin, s_tmax]


def test_edm_stochastic_is_reproducible_with_a_generator():
    noise, sigmas = torch.randn(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64), karras_sigmas(9)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return sample_edm_stochastic(gaussian_denoiser(), noise * 80, sigmas, generator=generator)

    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_the_adding_a_sampler_example_of_the_docs_runs_as_written():
    from pathlib import Path

    from workbench.diffusion.sampling import sample

    from .test_sampling import CaptionNet, captions

    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    example = doc.split("## Adding a sampler", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    try:
        exec(example, {})
        undamped = sample(CaptionNet(), captions(), steps=3, sampler="damped-euler", sampler_options={"damping": 1.0})
        assert torch.equal(undamped, sample(CaptionNet(), captions(), steps=3, sampler="euler"))
    finally:
        SAMPLERS.pop("damped-euler", None)

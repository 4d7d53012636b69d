"""The model learns, and deferred masking lets masked-out patches inform the kept ones."""

import torch

from tests.conftest import randomize_zero_params
from workbench.diffusion import EDMConfig, EDMLoss
from workbench.model import MicroDiT


def fixed_batch(seed=0, batch=4, resolution=16):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 3, resolution, resolution, generator=gen) * 0.9   # (B, C, H, W)
    caption = torch.randn(batch, 8, 384, generator=gen)                        # (B, L, D)
    return x0, caption


def test_nano_overfits_one_fixed_batch_with_the_edm_loss():
    torch.manual_seed(0)
    model = MicroDiT.from_preset("nano")
    x0, caption = fixed_batch()
    loss_fn = EDMLoss(EDMConfig())
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):   # the same sigma, noise and mask at every step: one fixed batch
        loss = loss_fn(model, x0, caption, mask_ratio=0.5, generator=torch.Generator().manual_seed(1)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"


def loss_with_changed_masked_patches(mixer_depth: int) -> tuple[float, float]:
    """Loss on a batch, and on the same batch with the clean image changed only inside dropped patches."""
    torch.manual_seed(0)
    model = randomize_zero_params(MicroDiT.from_preset("nano", mixer_depth=mixer_depth), std=0.1).eval()
    x0, caption = fixed_batch()
    seed = 3   # the same generator seed gives the same sigma, noise and patch mask in both calls

    def loss_of(x):
        return EDMLoss()(model, x, caption, mask_ratio=0.75, generator=torch.Generator().manual_seed(seed)).loss.item()

    with torch.no_grad():
        dropped = ~loss_of_keep(model, x0, caption, seed)                                       # (B, T)
        p = model.arch.patch_size
        pixels = dropped.view(4, 1, 8, 8).repeat_interleave(p, 2).repeat_interleave(p, 3)     # (B, 1, H, W)
        changed = x0 + 2.0 * pixels                                                             # (B, C, H, W)
        assert not torch.equal(changed, x0)
        return loss_of(x0), loss_of(changed)


def loss_of_keep(model, x0, caption, seed):
    """The keep mask that ``EDMLoss`` with generator seed ``seed`` draws (recorded with a forward hook)."""
    record = {}
    handle = model.register_forward_hook(lambda m, args, out: record.update(keep=out.keep))  # returns None
    with torch.no_grad():
        EDMLoss()(model, x0, caption, mask_ratio=0.75, generator=torch.Generator().manual_seed(seed))
    handle.remove()
    return record["keep"]


def test_without_a_mixer_masked_out_patches_do_not_affect_the_loss():
    base, changed = loss_with_changed_masked_patches(mixer_depth=0)
    assert changed == base


def test_with_a_mixer_masked_out_patches_inform_the_loss():
    base, changed = loss_with_changed_masked_patches(mixer_depth=1)
    assert abs(changed - base) > 1e-5 * abs(base)   # without a mixer the difference is exactly zero

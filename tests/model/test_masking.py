"""Random keep-masks, token gather and mask-token reinsertion."""

import torch

from workbench.model.masking import gather_tokens, num_kept, random_keep, restore_tokens


def test_keep_count_is_int_of_t_times_one_minus_r():
    assert num_kept(256, 0.75) == 64 and num_kept(1024, 0.75) == 256 and num_kept(10, 0.5) == 5


def test_keep_mask_matches_ids_keep():
    ids_keep, ids_restore, keep = random_keep(4, 16, 0.75, torch.Generator().manual_seed(0))
    for b in range(4):
        assert sorted(ids_keep[b].tolist()) == keep[b].nonzero().flatten().tolist()


def test_gather_then_restore_puts_kept_tokens_back_and_fills_the_rest():
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    ids_keep, ids_restore, keep = random_keep(2, 8, 0.5, torch.Generator().manual_seed(1))
    kept = gather_tokens(x, ids_keep)                                   # (2, 4, 3)
    full = restore_tokens(kept, ids_restore, torch.full((1, 1, 3), -1.0))
    assert kept.shape == (2, 4, 3)
    assert torch.equal(full[keep], x[keep])
    assert torch.all(full[~keep] == -1.0)

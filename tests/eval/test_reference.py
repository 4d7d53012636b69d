"""The shipped reference model: it loads from the package, samples without any data, and scores as recorded."""

from workbench.eval.compositional import evaluate_sampler, summarise
from workbench.train import checkpoint as ckpt
from workbench.train.inference import REFERENCE_DIR, load_for_sampling


def test_the_reference_model_ships_small_and_self_contained():
    [path] = ckpt.list_checkpoints(REFERENCE_DIR)
    assert ckpt.verify_checkpoint(path) == []
    assert sum(f.stat().st_size for f in path.iterdir()) < 10 * 2 ** 20
    state = ckpt.load_checkpoint(path, model=load_for_sampling("reference").model)
    assert state.extra["scores"]["single_object_colour"] >= 0.9 and "configs/demo-long" in state.extra["recipe"]


def test_the_reference_model_draws_the_named_colours_as_single_objects():
    bundle = load_for_sampling("reference", device="cpu")
    assert bundle.resolution == 32 and bundle.model.arch.in_channels == 3
    results, images = evaluate_sampler(bundle, samples_per_prompt=1, steps=12, cfg_scale=3.0, seed=0, progress=False,
                                       categories=("colours",))
    scores = summarise(results)
    assert images.shape == (14, 32, 32, 3)                   # 8 colours + the 6 held-out pairs
    assert scores["single_object_colour"] >= 0.8          # recorded: 1.00 (an untrained model scores ~0.1)
    assert scores["attributes"]["count"] >= 0.6           # one solid object per image (recorded: 0.98)

